// fluxssa: Flux's apply engine (github.com/fluxcd/pkg/ssa) as a one-shot command, a peer of
// `pbsync apply --target kube` in scripts/bench-kube-apply.
//
//	fluxssa -f DIR -name NAME -namespace NAMESPACE
//
// It reads every YAML file of DIR and applies the objects the way kustomize-controller's
// reconcile does (internal/controller/kustomization_controller.go, func apply): a
// ResourceManager owned by {Field: "kustomize-controller", Group:
// "kustomize.toolkit.fluxcd.io"}, the owner labels of a Kustomization NAME in NAMESPACE,
// SetConcurrency(4) (the controller's --concurrent-ssa default), normalize.UnstructuredList,
// the controller's ApplyOptions (selectors, cleanup of kubectl's field managers and
// annotations), then ApplyAllStaged. The REST config is the controller's: QPS 50 and burst
// 300 (its --kube-api-qps/--kube-api-burst defaults), or no client-side rate limit when the
// API server has API Priority and Fairness, as fluxcd/pkg/runtime/client.GetConfigOrDie
// decides. Not done, as they are not the apply engine: kustomize build, SOPS, the
// inventory, pruning, health checks, events and status.
//
// It prints one line per action ("created 1000") and the client's rate limit on stderr.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	"github.com/fluxcd/cli-utils/pkg/flowcontrol"
	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/pkg/ssa"
	"github.com/fluxcd/pkg/ssa/normalize"
	ssautil "github.com/fluxcd/pkg/ssa/utils"
)

// What kustomize-controller v1 sets (main.go and api/v1).
const (
	controllerName  = "kustomize-controller"
	kustomizeGroup  = "kustomize.toolkit.fluxcd.io"
	concurrentSSA   = 4  // --concurrent-ssa default
	kubeAPIQPS      = 50 // --kube-api-qps default
	kubeAPIBurst    = 300
	disabledValue   = "disabled" // api/v1: DisabledValue, IgnoreValue, ...
	ignoreValue     = "Ignore"
	ifNotPresent    = "IfNotPresent"
	enabledValue    = "enabled"
	mergeValue      = "Merge"
	checksumAnnot   = "kustomize.toolkit.fluxcd.io/checksum"
	syncChecksum    = "fluxcd.io/sync-checksum"
	syncGCMarkLabel = "fluxcd.io/sync-gc-mark"
)

func main() {
	dir := flag.String("f", "", "directory of YAML files to apply")
	name := flag.String("name", "bench", "name of the Kustomization the owner labels name")
	namespace := flag.String("namespace", "default", "namespace of that Kustomization")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: fluxssa -f DIR [-name NAME] [-namespace NAMESPACE]")
		os.Exit(2)
	}
	if err := run(context.Background(), *dir, *name, *namespace); err != nil {
		fmt.Fprintf(os.Stderr, "fluxssa: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir, name, namespace string) error {
	objects, err := readObjects(dir)
	if err != nil {
		return err
	}

	config, err := restConfig(ctx)
	if err != nil {
		return err
	}
	httpClient, err := rest.HTTPClientFor(config)
	if err != nil {
		return err
	}
	mapper, err := apiutil.NewDynamicRESTMapper(config, httpClient)
	if err != nil {
		return err
	}
	kubeClient, err := client.New(config, client.Options{
		HTTPClient: httpClient,
		Scheme:     clientgoscheme.Scheme,
		Mapper:     mapper,
	})
	if err != nil {
		return err
	}
	poller := polling.NewStatusPoller(kubeClient, mapper, polling.Options{})

	manager := ssa.NewResourceManager(kubeClient, poller, ssa.Owner{
		Field: controllerName,
		Group: kustomizeGroup,
	})
	manager.SetOwnerLabels(objects, name, namespace)
	manager.SetConcurrency(concurrentSSA)

	if err := normalize.UnstructuredList(objects); err != nil {
		return err
	}
	changeSet, err := manager.ApplyAllStaged(ctx, objects, applyOptions())
	if err != nil {
		return err
	}
	counts := map[ssa.Action]int{}
	for _, entry := range changeSet.Entries {
		counts[entry.Action]++
	}
	actions := make([]string, 0, len(counts))
	for action := range counts {
		actions = append(actions, string(action))
	}
	sort.Strings(actions)
	for _, action := range actions {
		fmt.Printf("%s %d\n", action, counts[ssa.Action(action)])
	}
	return nil
}

// readObjects reads every .yaml/.yml file of dir, in name order, as kustomize-controller
// reads its build output (ssautil.ReadObjects).
func readObjects(dir string) ([]*unstructured.Unstructured, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var objects []*unstructured.Unstructured
	for _, entry := range entries {
		ext := filepath.Ext(entry.Name())
		if entry.IsDir() || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, entry.Name()))
		if err != nil {
			return nil, err
		}
		objs, err := ssautil.ReadObjects(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", entry.Name(), err)
		}
		objects = append(objects, objs...)
	}
	return objects, nil
}

// restConfig: the kubeconfig's config with the rate limit fluxcd/pkg/runtime/client's
// GetConfigOrDie gives kustomize-controller.
func restConfig(ctx context.Context) (*rest.Config, error) {
	config, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, err
	}
	if enabled, err := flowcontrol.IsEnabled(ctx, config); err == nil && enabled {
		config.QPS = -1
		config.Burst = -1
		fmt.Fprintln(os.Stderr, "fluxssa: no client-side rate limit (the API server has priority and fairness)")
	} else {
		config.QPS = kubeAPIQPS
		config.Burst = kubeAPIBurst
		fmt.Fprintf(os.Stderr, "fluxssa: client-side rate limit %d qps, burst %d\n", kubeAPIQPS, kubeAPIBurst)
	}
	return config, nil
}

// applyOptions: kustomize-controller's, for a Kustomization with force off, no ignore rules
// and no custom stage kinds (the defaults).
func applyOptions() ssa.ApplyOptions {
	opts := ssa.DefaultApplyOptions()
	opts.Force = false
	opts.ExclusionSelector = map[string]string{
		kustomizeGroup + "/reconcile": disabledValue,
		kustomizeGroup + "/ssa":       ignoreValue,
	}
	opts.IfNotPresentSelector = map[string]string{
		kustomizeGroup + "/ssa": ifNotPresent,
	}
	opts.ForceSelector = map[string]string{
		kustomizeGroup + "/force": enabledValue,
	}
	opts.Cleanup = ssa.ApplyCleanupOptions{
		Annotations: []string{
			corev1.LastAppliedConfigAnnotation,
			checksumAnnot,
			syncChecksum,
		},
		Labels: []string{syncGCMarkLabel},
		FieldManagers: []ssa.FieldManager{
			{Name: "kubectl", OperationType: metav1.ManagedFieldsOperationApply},
			{Name: "kubectl", OperationType: metav1.ManagedFieldsOperationUpdate},
			{Name: "before-first-apply", OperationType: metav1.ManagedFieldsOperationUpdate},
			{Name: controllerName, OperationType: metav1.ManagedFieldsOperationUpdate},
		},
		Exclusions: map[string]string{
			kustomizeGroup + "/ssa": mergeValue,
		},
	}
	return opts
}
