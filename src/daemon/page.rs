//! The read-only web page on the daemon's listen address (`/`, when `ui: true`): each root as
//! a tree of its closure, every node coloured by its health with the cause on hover (`title`)
//! and on expand (`<details>`), the last pass's outcome and its plan with the reasons, the
//! revision applied and the revision healthy.
//!
//! Server-rendered with `maud` (escaped by construction), a little inline CSS, no JavaScript
//! and no external asset: the management host may have no internet. It reloads itself every
//! 10 seconds with a `<meta http-equiv="refresh">`.

use std::collections::BTreeSet;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::board::{Board, Picture};
use super::health::LastOutcome;
use pbsync_core::health::{Report, State};
use pbsync_core::model::ObjectKey;
use pbsync_core::plan::{Action, Plan};

const STYLE: &str = r#"
:root { --current:#1a7f37; --in-progress:#9a6700; --unknown:#6e7781; --failed:#cf222e; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem 2rem; color:#1f2328; background:#fff; }
h1 { font-size: 1.35rem; margin: 0 0 .25rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
.meta { display:grid; grid-template-columns: max-content auto; gap:.15rem 1rem; margin:.75rem 0; }
.meta dt { color:#59636e; } .meta dd { margin:0; }
code { font: 12px ui-monospace, monospace; }
.badge { display:inline-block; min-width:6.5em; text-align:center; border-radius:1em; padding:0 .5em;
         color:#fff; font-size:12px; margin-right:.5em; }
.state-current > .line .badge, .badge.state-current { background:var(--current); }
.state-in-progress > .line .badge, .badge.state-in-progress { background:var(--in-progress); }
.state-unknown > .line .badge, .badge.state-unknown { background:var(--unknown); }
.state-failed > .line .badge, .badge.state-failed { background:var(--failed); }
ul.tree { list-style:none; padding-left:1.4rem; margin:.1rem 0; border-left:1px dotted #d0d7de; }
ul.roots { padding-left:0; border:none; }
.root { border:1px solid #d0d7de; border-radius:6px; padding:.4rem .75rem; margin:.5rem 0; }
.root.state-failed { border-color:var(--failed); } .root.state-in-progress { border-color:var(--in-progress); }
.why { color:#59636e; margin-left:7.5em; white-space:pre-wrap; }
details > summary { cursor:pointer; }
table { border-collapse:collapse; } td, th { text-align:left; padding:.15rem .75rem .15rem 0; vertical-align:top; }
.action-delete { color:var(--failed); } .action-create { color:var(--current); }
.culprit { margin:.25rem 0; white-space:pre-wrap; }
"#;

/// Up to this many roots, every tree is shown open.
const OPEN_ROOTS: usize = 12;

/// The page, as of now.
pub fn render(instance: &str, outcome: &LastOutcome, board: &Board) -> String {
    let picture = board.picture();
    let healthy = board.healthy();
    let plan = board.plan();
    let now = jiff::Timestamp::now();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="10";
                title { "pbsync " (instance) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "pbsync " (instance) }
                dl.meta {
                    dt { "last pass" }
                    dd #outcome data-result=(outcome.result) {
                        (outcome.result) " "
                        @if let Some(stage) = &outcome.stage { "at " (stage) " " }
                        @if let Some(r) = &outcome.revision { "of " code { (short(r)) } }
                        ": " (outcome.message) " (" (outcome.at) ")"
                    }
                    dt { "applied" }
                    dd #applied {
                        @match &outcome.applied_revision {
                            Some(r) => { code { (short(r)) } " at " (outcome.applied_at.as_deref().unwrap_or("")) }
                            None => { "nothing yet" }
                        }
                    }
                    dt { "healthy" }
                    dd #healthy {
                        @match &healthy {
                            Some((r, at)) => { code { (short(r)) } " since " (at) }
                            None => { "no revision fully healthy yet" }
                        }
                    }
                    dt { "health" }
                    dd #health {
                        @match &picture {
                            Some(p) => {
                                span.badge.(format!("state-{}", p.report.state)) { (p.report.state) }
                                @for (state, n) in &p.report.counts { (n) " " (state) " " }
                                "(revision " code { (short(&p.report.revision)) } ", read " (p.at) ")"
                            }
                            None => { "not read yet" }
                        }
                    }
                }
                @if let Some(p) = &picture {
                    @if !p.report.culprits.is_empty() {
                        h2 { "What holds it back" }
                        div #culprits {
                            @for line in p.report.culprit_lines(now) {
                                div.culprit { code { (line) } }
                            }
                        }
                    }
                    h2 { "Roots" }
                    // A handful of roots are shown open; more, only those not current.
                    @let open_all = p.report.roots.len() <= OPEN_ROOTS;
                    ul.tree.roots #roots {
                        @for root in &p.report.roots {
                            (root_tree(p, &root.key, open_all, now))
                        }
                    }
                }
                @if let Some(plan) = &plan {
                    h2 { "Last plan" }
                    (plan_table(plan))
                }
            }
        }
    };
    markup.into_string()
}

fn short(revision: &str) -> &str {
    &revision[..revision.len().min(12)]
}

/// A root and its closure as nested lists; a node reached twice on one path is not expanded
/// again (the graph is acyclic; this only bounds the output).
fn root_tree(p: &Picture, key: &ObjectKey, open_all: bool, now: jiff::Timestamp) -> Markup {
    let report = &p.report;
    let state = report.combined(key);
    let why: Vec<String> = report.root(key).map(|r| r.chains(now)).unwrap_or_default();
    let mut path = BTreeSet::new();
    html! {
        li.root.node.(format!("state-{state}")) data-key=(key.to_string()) data-state=(state) {
            details open[open_all || state != State::Current] {
                summary.line title=(why.join("\n")) {
                    span.badge.(format!("state-{state}")) { (state) }
                    strong { (key.to_string()) }
                }
                @if !why.is_empty() {
                    div.why { (why.join("\n")) }
                }
                (children(p, report, key, &mut path, now))
            }
        }
    }
}

fn children(
    p: &Picture,
    report: &Report,
    key: &ObjectKey,
    path: &mut BTreeSet<ObjectKey>,
    now: jiff::Timestamp,
) -> Markup {
    let needs: Vec<ObjectKey> = p.graph.needs(key).into_iter().cloned().collect();
    if needs.is_empty() || !path.insert(key.clone()) {
        return html! {};
    }
    let out = html! {
        ul.tree {
            @for next in &needs {
                @let health = report.objects.get(next);
                @let state = health.map_or(State::Unknown, |h| h.state);
                @let why = health.map(|h| h.describe(now)).unwrap_or_else(|| "not read".into());
                li.node.(format!("state-{state}")) data-key=(next.to_string()) data-state=(state) {
                    @if state == State::Current {
                        div.line title=(why) {
                            span.badge.(format!("state-{state}")) { (state) }
                            (next.to_string())
                        }
                    } @else {
                        details.line {
                            summary title=(why) {
                                span.badge.(format!("state-{state}")) { (state) }
                                (next.to_string())
                            }
                            div.why { (why) }
                        }
                    }
                    (children(p, report, next, path, now))
                }
            }
        }
    };
    path.remove(key);
    out
}

fn plan_table(plan: &Plan) -> Markup {
    let acting: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .collect();
    let unchanged = plan.changes.len() - acting.len();
    html! {
        div #plan data-revision=(plan.revision) {
            p { "Revision " code { (short(&plan.revision)) } ": "
                (acting.len()) " change(s), " (unchanged) " unchanged." }
            @if !acting.is_empty() {
                table {
                    tr { th { "action" } th { "object" } th { "why" } }
                    @for c in &acting {
                        tr.(format!("action-{}", c.action.as_str())) {
                            td { (c.action.as_str()) }
                            td { (c.key.to_string()) }
                            td { @for r in &c.reasons { div { (r) } } }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
