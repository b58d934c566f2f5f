//! Routing one plan to two targets: cluster profiles to Palette (or wherever `palette`
//! points), everything else to the hub side. Plan and apply of one commit cover both, in one
//! dependency order.

use serde_json::Value;

use super::{Result, Status, Target};
use pbsync_core::graph::ResourceGraph;
use pbsync_core::guard::{DeletePermit, Now, ReleasePermit};
use pbsync_core::live::Observed;
use pbsync_core::model::{Kind, ObjectKey};
use pbsync_core::ownership::Stamp;
use pbsync_core::plan::Change;

/// Hub objects go to `hub`, cluster profiles to `palette`.
#[derive(Debug)]
pub struct Split<H, P> {
    /// Target of every hub kind.
    pub hub: H,
    /// Target of cluster profiles.
    pub palette: P,
}

fn is_palette(change: &Change) -> bool {
    change.key.kind == Kind::ClusterProfile
}

impl<H: Target, P: Target> Target for Split<H, P> {
    fn check(&self, graph: &ResourceGraph) -> Result<()> {
        self.hub.check(graph)?;
        self.palette.check(graph)
    }

    async fn observe(&self, graph: &ResourceGraph, stamp: &Stamp<'_>) -> Result<Observed> {
        let (hub, palette) = tokio::try_join!(
            self.hub.observe(graph, stamp),
            self.palette.observe(graph, stamp)
        )?;
        let mut observed = hub;
        observed
            .objects
            .retain(|k, _| k.kind != Kind::ClusterProfile);
        observed.objects.extend(
            palette
                .objects
                .into_iter()
                .filter(|(k, _)| k.kind == Kind::ClusterProfile),
        );
        observed
            .rejected
            .retain(|k, _| k.kind != Kind::ClusterProfile);
        observed.rejected.extend(
            palette
                .rejected
                .into_iter()
                .filter(|(k, _)| k.kind == Kind::ClusterProfile),
        );
        observed.read_at = observed.read_at.or(palette.read_at);
        // The hub side keeps the record of pending removals of both sides.
        Ok(observed)
    }

    async fn prepare(&self, changes: &[&Change]) -> Result<()> {
        let (p, h): (Vec<&Change>, Vec<&Change>) =
            changes.iter().copied().partition(|c| is_palette(c));
        if !h.is_empty() {
            self.hub.prepare(&h).await?;
        }
        if !p.is_empty() {
            self.palette.prepare(&p).await?;
        }
        Ok(())
    }

    async fn write(&self, change: &Change, desired: &Value) -> Result<()> {
        if is_palette(change) {
            self.palette.write(change, desired).await
        } else {
            self.hub.write(change, desired).await
        }
    }

    async fn recheck(&self, change: &Change) -> Result<Option<Now>> {
        if is_palette(change) {
            self.palette.recheck(change).await
        } else {
            self.hub.recheck(change).await
        }
    }

    async fn release(&self, change: &Change, permit: ReleasePermit) -> Result<()> {
        if is_palette(change) {
            self.palette.release(change, permit).await
        } else {
            self.hub.release(change, permit).await
        }
    }

    async fn delete(&self, change: &Change, permit: DeletePermit) -> Result<()> {
        if is_palette(change) {
            self.palette.delete(change, permit).await
        } else {
            self.hub.delete(change, permit).await
        }
    }

    fn request_counts(&self) -> Vec<(&'static str, crate::RequestCounts)> {
        let mut all = self.hub.request_counts();
        all.extend(self.palette.request_counts());
        all
    }

    fn concurrency(&self) -> usize {
        self.hub
            .concurrency()
            .min(self.palette.concurrency())
            .max(1)
    }

    async fn record(&self, status: &Status) -> Result<()> {
        self.hub.record(status).await?;
        self.palette.record(status).await
    }

    /// The hub side records the pass, and what it is about to remove on both sides.
    async fn record_pending(
        &self,
        removals: &[(pbsync_core::model::ObjectKey, pbsync_core::live::Removal)],
    ) -> Result<()> {
        self.hub.record_pending(removals).await
    }

    /// The hub side records the pass.
    /// The hub holds the Events and the status record.
    async fn record_health(&self, record: &crate::HealthRecord) -> Result<()> {
        self.hub.record_health(record).await
    }

    async fn recorded(&self) -> Result<Option<crate::Recorded>> {
        self.hub.recorded().await
    }

    /// The hub side's lock covers both sides.
    async fn lock(&self, holder: &str, wait: std::time::Duration) -> Result<crate::PassLock> {
        self.hub.lock(holder, wait).await
    }

    fn follow<'a>(&'a self, graph: &'a ResourceGraph, keys: Vec<ObjectKey>) -> crate::Follow<'a> {
        let (palette, hub): (Vec<ObjectKey>, Vec<ObjectKey>) = keys
            .into_iter()
            .partition(|k| k.kind == Kind::ClusterProfile);
        let mut streams = Vec::new();
        if !hub.is_empty() {
            streams.push(self.hub.follow(graph, hub));
        }
        if !palette.is_empty() {
            streams.push(self.palette.follow(graph, palette));
        }
        if streams.is_empty() {
            return Box::pin(futures::stream::pending());
        }
        Box::pin(futures::stream::select_all(streams))
    }
}
