//! A plan as pull-request comments (Markdown): validation errors first, then a summary line,
//! the mass-deletion guard, one table per action (deletions and blocked changes first) with
//! the reason chain of every decision, the impact on bundles, pools and deployments, field
//! diffs of updates in collapsed blocks with secrets masked, and a footer naming the commits
//! and the time of the live read. Split into several comments under GitHub's size limit.
//! Pure: no I/O.

use std::fmt::Write as _;

use serde_json::Value;

use super::mask::mask_change;
use super::render::short_rev;
use super::{Action, Change, FieldChange, Impact, Plan};
use crate::model::Kind;

/// The first line of every comment: CI finds its own comments by it and replaces them.
pub const MARKER: &str = "<!-- pbsync-plan -->";

/// GitHub's limit on the body of one comment, in characters.
pub const GITHUB_LIMIT: usize = 65_536;

/// Longest value shown in a field diff; longer ones are cut with a note.
const MAX_VALUE_CHARS: usize = 4_000;

/// Most dependents named in one impact cell; the JSON plan has them all.
const MAX_NAMES: usize = 30;

/// Where the plan comes from, for the title and footer.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Base commit of a pull request (full id).
    pub base: Option<String>,
    /// Head commit of a pull request (full id).
    pub head: Option<String>,
    /// Planned against the state base would produce rather than live state.
    pub offline: bool,
}

/// One piece of a comment that is never cut; `resume` is repeated first when the piece
/// opens a new comment (a table's heading and header row).
struct Unit {
    text: String,
    resume: Option<String>,
}

impl Unit {
    fn new(text: String) -> Self {
        Self { text, resume: None }
    }
}

/// The plan as comments of at most [`GITHUB_LIMIT`] characters.
pub fn render_comments(plan: &Plan, ctx: &Context) -> Vec<String> {
    render_comments_within(plan, ctx, GITHUB_LIMIT)
}

/// The plan as comments of at most `limit` characters (at least 2,000), each starting with
/// [`MARKER`] and, when there are several, saying "part i of n".
pub fn render_comments_within(plan: &Plan, ctx: &Context, limit: usize) -> Vec<String> {
    let limit = limit.max(2_000);
    let footer = footer(plan, ctx);
    let widest_header = header(plan, ctx, 9_999, 9_999);
    let budget = limit.saturating_sub(widest_header.chars().count() + footer.chars().count());
    let bodies = pack(units(plan), budget);
    let n = bodies.len();
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| format!("{}{body}{footer}", header(plan, ctx, i + 1, n)))
        .collect()
}

fn header(plan: &Plan, ctx: &Context, i: usize, n: usize) -> String {
    let what = match (&ctx.base, &ctx.head) {
        (Some(b), Some(h)) => format!("merge of `{}` into `{}`", short_rev(h), short_rev(b)),
        _ => format!("`{}`", short_rev(&plan.revision)),
    };
    let part = if n > 1 {
        format!(" (part {i} of {n})")
    } else {
        String::new()
    };
    format!("{MARKER}\n### pbsync plan: {what}{part}\n\n")
}

fn footer(plan: &Plan, ctx: &Context) -> String {
    let mut parts = Vec::new();
    match (&ctx.base, &ctx.head) {
        (Some(b), Some(h)) => {
            parts.push(format!("base `{b}`"));
            parts.push(format!("head `{h}`"));
        }
        _ => parts.push(format!("revision `{}`", plan.revision)),
    }
    if ctx.offline {
        parts.push("offline: against the state base would produce".into());
    } else {
        match &plan.read_at {
            Some(t) => parts.push(format!("live state read at {t}")),
            None => parts.push("live state read at an unrecorded time".into()),
        }
    }
    format!("\n---\n<sub>{}</sub>\n", parts.join(" · "))
}

/// The hidden line a posted plan carries after [`MARKER`]: which changes the reviewers saw,
/// so the daemon can tell after the merge whether what it applied is what was reviewed.
pub const CHANGES_NOTE: &str = "<!-- pbsync-plan-changes ";

/// Most changes listed by name in a [`ChangeNote`]; a longer plan is recorded by count and
/// digest only.
const MAX_LISTED: usize = 100;

/// The changes a plan makes, as one comparable record: every change that acts or is
/// blocked, as `action key` lines, sorted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeNote {
    /// Number of lines.
    pub count: usize,
    /// SHA-256 of the lines joined by newlines.
    pub sha256: String,
    /// The lines, when there are at most [`MAX_LISTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// How an applied plan differs from the one posted for review.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NoteDifference {
    /// Changes applied that the posted plan did not show (empty when not listed).
    pub unreviewed: Vec<String>,
    /// Changes the posted plan showed that were not applied (empty when not listed).
    pub not_applied: Vec<String>,
    /// Counts when the lists are too long to name: (posted, applied).
    pub counts: (usize, usize),
}

impl ChangeNote {
    /// The note of `plan`.
    pub fn of(plan: &Plan) -> Self {
        let mut lines: Vec<String> = plan
            .changes
            .iter()
            .filter(|c| c.action.is_change() || c.action == Action::Blocked)
            .map(|c| format!("{} {}", c.action.as_str(), c.key))
            .collect();
        lines.sort();
        lines.dedup();
        use sha2::Digest as _;
        let sha256 = hex::encode(sha2::Sha256::digest(lines.join("\n").as_bytes()));
        let count = lines.len();
        if count > MAX_LISTED {
            lines.clear();
        }
        Self {
            count,
            sha256,
            changes: lines,
        }
    }

    /// The hidden line (with its newline).
    pub fn render(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{CHANGES_NOTE}{json} -->\n")
    }

    /// The note in a comment body, if it carries one.
    pub fn find(body: &str) -> Option<Self> {
        let start = body.find(CHANGES_NOTE)? + CHANGES_NOTE.len();
        let rest = &body[start..];
        let end = rest.find(" -->")?;
        serde_json::from_str(&rest[..end]).ok()
    }

    /// How `applied` differs from `self` (the posted note); `None` when they agree.
    pub fn difference(&self, applied: &Self) -> Option<NoteDifference> {
        if self.sha256 == applied.sha256 {
            return None;
        }
        let listed = self.changes.len() == self.count && applied.changes.len() == applied.count;
        let mut d = NoteDifference {
            counts: (self.count, applied.count),
            ..NoteDifference::default()
        };
        if listed {
            d.unreviewed = applied
                .changes
                .iter()
                .filter(|c| !self.changes.contains(c))
                .cloned()
                .collect();
            d.not_applied = self
                .changes
                .iter()
                .filter(|c| !applied.changes.contains(c))
                .cloned()
                .collect();
        }
        Some(d)
    }
}

/// Packs units into bodies of at most `budget` characters.
fn pack(units: Vec<Unit>, budget: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0usize;
    for unit in units {
        let resume_len = unit.resume.as_deref().map_or(0, |r| r.chars().count());
        let text = cut(&unit.text, budget.saturating_sub(resume_len));
        let len = text.chars().count();
        if cur_len + len > budget && cur_len > 0 {
            bodies.push(std::mem::take(&mut cur));
            cur_len = 0;
            if let Some(r) = &unit.resume {
                cur.push_str(r);
                cur_len += resume_len;
            }
        }
        cur.push_str(&text);
        cur_len += len;
    }
    if !cur.is_empty() || bodies.is_empty() {
        bodies.push(cur);
    }
    bodies
}

/// `text` cut to `max` characters, with a note, when longer.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let note = "\n\n_(cut: too long for one comment; see `--format json`)_\n";
    let keep = max.saturating_sub(note.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(note);
    out
}

/// A table cell: no line breaks or pipes, no HTML.
fn cell(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .replace('\n', "<br>")
}

fn title(action: Action) -> &'static str {
    match action {
        Action::Delete => ":wastebasket: Delete",
        Action::Orphan => ":link: Orphan (left in place, released)",
        Action::Blocked => ":no_entry: Blocked",
        Action::Unknown => ":grey_question: Unknown (could not compare)",
        Action::Create => ":sparkles: Create",
        Action::Update => ":pencil2: Update",
        Action::Unchanged => "Unchanged",
    }
}

fn units(plan: &Plan) -> Vec<Unit> {
    let mut out = Vec::new();
    if !plan.violations.is_empty() {
        let n = plan.violations.len();
        let heading = format!(
            "#### :x: {n} validation error{} — nothing would be applied from this commit\n\n",
            if n == 1 { "" } else { "s" }
        );
        let head = "| where | rule | problem |\n|---|---|---|\n";
        out.push(Unit::new(format!("{heading}{head}")));
        for v in &plan.violations {
            out.push(Unit {
                text: format!(
                    "| `{}:{}` | {} | {} |\n",
                    v.path,
                    v.line,
                    v.rule,
                    cell(&v.message)
                ),
                resume: Some(format!("#### :x: Validation errors (continued)\n\n{head}")),
            });
        }
        out.push(Unit::new("\n".into()));
    }
    let s = plan.summary();
    if !plan.violations.is_empty() {
        // An invalid commit plans nothing; counts of zero would only read as "safe".
        push_warnings(plan, &mut out);
        return out;
    }
    out.push(Unit::new(format!(
        "**{} to create, {} to update, {} to delete, {} to orphan, {} blocked, {} unknown** ({} unchanged)\n\n",
        s.create, s.update, s.delete, s.orphan, s.blocked, s.unknown, s.unchanged
    )));
    if let Some(g) = &plan.guard {
        out.push(Unit::new(format!(
            "> [!CAUTION]\n> **Mass-deletion guard: this plan deletes or orphans {} of {} managed objects, and {} of {} managed ProfileBundles.** `pbsync apply` refuses it without `--allow-mass-deletion`.\n> {}\n\n",
            g.deletions,
            g.managed,
            g.bundles_deleted,
            g.bundles_managed,
            cell(&g.message)
        )));
    }
    if !plan.has_changes() && s.blocked == 0 && s.unknown == 0 {
        out.push(Unit::new("No changes.\n\n".into()));
    }
    let order = [
        Action::Delete,
        Action::Blocked,
        Action::Orphan,
        Action::Unknown,
        Action::Create,
        Action::Update,
    ];
    // Shared objects kept alive by other bundles while some referrer leaves: unchanged, but
    // the answer to "why is this not deleted?".
    let kept = |c: &&Change| {
        c.action == Action::Unchanged && c.reasons.iter().any(|r| r.starts_with("kept"))
    };
    let sections = order
        .iter()
        .map(|&a| {
            let rows: Vec<&Change> = plan.changes.iter().filter(|c| c.action == a).collect();
            (title(a), rows)
        })
        .take(3)
        .chain(std::iter::once((
            ":shield: Kept (still referenced)",
            plan.changes.iter().filter(kept).collect(),
        )))
        .chain(order.iter().skip(3).map(|&a| {
            let rows: Vec<&Change> = plan.changes.iter().filter(|c| c.action == a).collect();
            (title(a), rows)
        }));
    for (title, rows) in sections {
        if rows.is_empty() {
            continue;
        }
        let head = "| kind | object | refs | why |\n|---|---|---|---|\n";
        out.push(Unit::new(format!(
            "#### {title} ({})\n\n{head}",
            rows.len()
        )));
        let resume = format!("#### {title} (continued)\n\n{head}");
        for c in rows {
            out.push(Unit {
                text: row(c),
                resume: Some(resume.clone()),
            });
        }
        out.push(Unit::new("\n".into()));
    }
    if !plan.impact.is_empty() {
        let head = "| changed object | action | bundles | compute pools | deployments |\n|---|---|---|---|---|\n";
        out.push(Unit::new(format!(
            "#### :dart: Impact ({} changed shared object{})\n\nEvery bundle, pool and deployment that depends on a changed object, whether or not its own file changed.\n\n{head}",
            plan.impact.len(),
            if plan.impact.len() == 1 { "" } else { "s" }
        )));
        let resume = format!("#### :dart: Impact (continued)\n\n{head}");
        for i in &plan.impact {
            out.push(Unit {
                text: impact_row(i),
                resume: Some(resume.clone()),
            });
        }
        out.push(Unit::new("\n".into()));
    }
    if !plan.deployments.is_empty() {
        let head = "| deployment | Fullstack bundle | workflow | deploys | ignores |\n|---|---|---|---|---|\n";
        out.push(Unit::new(format!(
            "#### :package: Fullstack bundles in deployments ({})\n\nA Fullstack bundle used outside its primary workflow deploys only some of its parts (the seed's \"Fullstack Profile Bundle Deployment Behavior\").\n\n{head}",
            plan.deployments.len()
        )));
        let resume =
            format!("#### :package: Fullstack bundles in deployments (continued)\n\n{head}");
        for d in &plan.deployments {
            out.push(Unit {
                text: deployment_row(d),
                resume: Some(resume.clone()),
            });
        }
        out.push(Unit::new("\n".into()));
    }
    if !plan.references.is_empty() {
        let head = "| object | where | used by |\n|---|---|---|\n";
        out.push(Unit::new(format!(
            "#### :link: References outside the repository ({})\n\nEdges of the graph like any other, but never created, changed or deleted by this instance.\n\n{head}",
            plan.references.len()
        )));
        let resume = format!("#### :link: References outside the repository (continued)\n\n{head}");
        for r in &plan.references {
            let used_by: Vec<String> = r
                .used_by
                .iter()
                .map(|k| format!("{} `{}`", k.kind, k.short()))
                .collect();
            out.push(Unit {
                text: format!(
                    "| {} `{}` | {} | {} |\n",
                    r.key.kind,
                    r.key.short(),
                    cell(&r.reason),
                    used_by.join("<br>")
                ),
                resume: Some(resume.clone()),
            });
        }
        out.push(Unit::new("\n".into()));
    }
    let updates: Vec<&Change> = plan.changes.iter().filter(|c| !c.diff.is_empty()).collect();
    if !updates.is_empty() {
        out.push(Unit::new(format!(
            "#### Field changes ({} object{})\n\n",
            updates.len(),
            if updates.len() == 1 { "" } else { "s" }
        )));
        for c in updates {
            out.push(Unit {
                text: details(c),
                resume: Some("#### Field changes (continued)\n\n".into()),
            });
        }
    }
    push_warnings(plan, &mut out);
    out
}

fn deployment_row(d: &crate::model::DeploymentParts) -> String {
    let parts = |list: &[crate::model::PartRef]| {
        if list.is_empty() {
            "—".to_string()
        } else {
            list.iter()
                .map(|p| format!("{} `{}`", p.part.label(), p.key.short()))
                .collect::<Vec<_>>()
                .join("<br>")
        }
    };
    let role = if d.primary {
        "primary workflow"
    } else {
        "outside its primary workflow"
    };
    format!(
        "| {} `{}` | `{}` | {}, {:?} pool ({role}) | {} | {} |\n",
        d.deployment.kind,
        d.deployment.short(),
        d.bundle.short(),
        d.workflow,
        d.pool,
        cell(&parts(&d.deployed)),
        cell(&parts(&d.ignored)),
    )
}

fn push_warnings(plan: &Plan, out: &mut Vec<Unit>) {
    let guard_message = plan.guard.as_ref().map(|g| g.message.as_str());
    let warnings: Vec<&String> = plan
        .warnings
        .iter()
        .filter(|w| Some(w.as_str()) != guard_message)
        .collect();
    if !warnings.is_empty() {
        out.push(Unit::new(format!(
            "#### :warning: Warnings ({})\n\n",
            warnings.len()
        )));
        for w in warnings {
            out.push(Unit {
                text: format!("- {}\n", cell(w)),
                resume: Some("#### :warning: Warnings (continued)\n\n".into()),
            });
        }
    }
}

fn row(c: &Change) -> String {
    let refs = c.references.map_or_else(String::new, |r| r.to_string());
    let mut object = format!("`{}`", c.key.short());
    if let Some(src) = &c.source {
        let _ = write!(object, "<br><sub>{}</sub>", cell(&src.to_string()));
    }
    let why = c
        .reasons
        .iter()
        .map(|r| cell(r))
        .collect::<Vec<_>>()
        .join("<br>");
    format!("| {} | {object} | {refs} | {why} |\n", c.key.kind)
}

fn names(i: &Impact, kind: Kind) -> String {
    let all: Vec<String> = i
        .of_kind(kind)
        .map(|d| {
            let own = match d.action {
                Some(Action::Unchanged) => String::new(),
                Some(a) => format!(" ({})", a.as_str()),
                None => " (removed)".into(),
            };
            format!("`{}`{own}", d.key.short())
        })
        .collect();
    if all.is_empty() {
        return "—".into();
    }
    let n = all.len();
    let mut shown = all
        .into_iter()
        .take(MAX_NAMES)
        .collect::<Vec<_>>()
        .join(", ");
    if n > MAX_NAMES {
        let _ = write!(shown, " and {} more", n - MAX_NAMES);
    }
    if n > 1 {
        let _ = write!(shown, " ({n})");
    }
    shown
}

fn impact_row(i: &Impact) -> String {
    format!(
        "| {} `{}` | {} | {} | {} | {} |\n",
        i.key.kind,
        i.key.short(),
        i.action.as_str(),
        names(i, Kind::ProfileBundle),
        names(i, Kind::ComputePool),
        names(i, Kind::AiWorkload)
    )
}

fn details(c: &Change) -> String {
    let kind = c.key.kind.as_str();
    let mut body = String::new();
    for d in &c.diff {
        let d = mask_change(kind, d);
        diff_lines(&mut body, &d);
    }
    let fence = fence_for(&body);
    let n = c.diff.len();
    format!(
        "<details><summary>{kind} <code>{}</code>: {n} field{}</summary>\n\n{fence}diff\n{body}{fence}\n\n</details>\n\n",
        cell(&c.key.short()),
        if n == 1 { "" } else { "s" }
    )
}

fn diff_lines(out: &mut String, d: &FieldChange) {
    let _ = writeln!(out, "@@ {} @@", d.path);
    for (sign, v) in [('-', &d.before), ('+', &d.after)] {
        let Some(v) = v else { continue };
        for line in value_text(v).lines() {
            let _ = writeln!(out, "{sign} {line}");
        }
    }
}

/// A value as diff text: multi-line strings as their lines, everything else as compact JSON;
/// cut at [`MAX_VALUE_CHARS`].
fn value_text(v: &Value) -> String {
    let text = match v {
        Value::String(s) if s.contains('\n') => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() <= MAX_VALUE_CHARS {
        return text;
    }
    let total = text.chars().count();
    let mut cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
    let _ = write!(cut, "\n… ({} more characters)", total - MAX_VALUE_CHARS);
    cut
}

/// A code fence longer than any run of backticks in `body`.
fn fence_for(body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for ch in body.chars() {
        if ch == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::GuardTrip;
    use crate::model::ObjectKey;
    use crate::plan::{Executor, Phase};
    use serde_json::json;

    fn change(action: Action, name: &str) -> Change {
        Change {
            action,
            phase: Phase::Apply,
            key: ObjectKey::new(Kind::HelmRepository, "team-a", name),
            references: Some(1),
            reasons: vec![format!("because {name} | matters")],
            source: None,
            diff: Vec::new(),
            adopt: false,
            executor: Executor::Pbsync,
            effective_policy: None,
            observed: None,
        }
    }

    fn plan(changes: Vec<Change>) -> Plan {
        Plan {
            revision: "0123456789abcdef0123456789abcdef01234567".into(),
            changes,
            warnings: Vec::new(),
            guard: None,
            read_at: Some("2025-01-01T00:00:00Z".into()),
            impact: Vec::new(),
            violations: Vec::new(),
            deployments: Vec::new(),
            missing_namespaces: Vec::new(),
            references: Vec::new(),
        }
    }

    #[test]
    fn a_change_note_survives_a_comment_and_names_what_differs() {
        let reviewed = plan(vec![
            change(Action::Create, "a"),
            change(Action::Unchanged, "b"),
            change(Action::Delete, "c"),
        ]);
        let note = ChangeNote::of(&reviewed);
        assert_eq!(note.count, 2, "unchanged objects are not changes");
        let body = format!("{MARKER}\n{}### pbsync plan\n", note.render());
        let found = ChangeNote::find(&body).expect("the note is found in the body");
        assert_eq!(found, note);
        assert_eq!(found.difference(&ChangeNote::of(&reviewed)), None);

        let applied = plan(vec![
            change(Action::Create, "a"),
            change(Action::Update, "d"),
        ]);
        let d = found
            .difference(&ChangeNote::of(&applied))
            .expect("the applied plan differs");
        assert_eq!(
            d.unreviewed,
            vec!["update HelmRepository team-a/d".to_string()]
        );
        assert_eq!(
            d.not_applied,
            vec!["delete HelmRepository team-a/c".to_string()]
        );
    }

    #[test]
    fn a_long_plan_is_noted_by_count_and_digest() {
        let many: Vec<Change> = (0..150)
            .map(|i| change(Action::Create, &format!("o{i}")))
            .collect();
        let note = ChangeNote::of(&plan(many.clone()));
        assert_eq!((note.count, note.changes.len()), (150, 0));
        let mut fewer = many;
        fewer.pop();
        let d = note
            .difference(&ChangeNote::of(&plan(fewer)))
            .expect("the digests differ");
        assert_eq!(d.counts, (150, 149));
        assert!(d.unreviewed.is_empty() && d.not_applied.is_empty());
    }

    #[test]
    fn deletions_come_before_creates_and_cells_are_escaped() {
        let p = plan(vec![
            change(Action::Create, "new"),
            change(Action::Delete, "old"),
        ]);
        let parts = render_comments(&p, &Context::default());
        assert_eq!(parts.len(), 1);
        let md = &parts[0];
        assert!(md.starts_with(MARKER), "{md}");
        assert!(md.find("Delete (1)") < md.find("Create (1)"), "{md}");
        assert!(md.contains("because old \\| matters"), "{md}");
        assert!(
            !md.contains("part 1"),
            "a single comment has no part number"
        );
        assert!(md.contains("live state read at 2025-01-01T00:00:00Z"));
    }

    #[test]
    fn fullstack_parts_of_deployments_are_listed() {
        use crate::model::{DeploymentParts, Part, PartRef, PoolVariant, Workflow};
        let mut p = plan(vec![change(Action::Create, "new")]);
        p.deployments = vec![DeploymentParts {
            deployment: ObjectKey::new(Kind::AiWorkload, "team-a", "chat"),
            workflow: Workflow::AppDeployment,
            pool: PoolVariant::Shared,
            bundle: ObjectKey::new(Kind::ProfileBundle, "team-a", "full"),
            primary: false,
            deployed: vec![PartRef {
                part: Part::ApplicationWorkloadProfile,
                key: ObjectKey::new(Kind::WorkloadProfile, "team-a", "ui"),
            }],
            ignored: vec![PartRef {
                part: Part::ClusterProfile,
                key: ObjectKey::cluster_profile("project", "infra", "1.0.0"),
            }],
        }];
        let md = render_comments(&p, &Context::default()).concat();
        assert!(md.contains("Fullstack bundles in deployments (1)"), "{md}");
        let row = md
            .lines()
            .find(|l| l.contains("team-a/chat"))
            .expect("a row for the deployment");
        assert!(row.contains("outside its primary workflow"), "{row}");
        assert!(
            row.contains("team-a/ui") && row.contains("project/infra@1.0.0"),
            "{row}"
        );
        assert!(
            row.find("team-a/ui") < row.find("project/infra@1.0.0"),
            "deploys before ignores: {row}"
        );
    }

    #[test]
    fn update_diffs_are_collapsed_and_masked() {
        let mut c = change(Action::Update, "repo");
        c.diff = vec![
            FieldChange {
                path: "spec.url".into(),
                before: Some(json!("https://a")),
                after: Some(json!("https://b")),
            },
            FieldChange {
                path: "spec.secretValue".into(),
                before: Some(json!("hunter2")),
                after: Some(json!("hunter3")),
            },
        ];
        let md = render_comments(&plan(vec![c]), &Context::default()).join("");
        assert!(md.contains(
            "<details><summary>HelmRepository <code>team-a/repo</code>: 2 fields</summary>"
        ));
        assert!(md.contains("- \"https://a\"\n+ \"https://b\""), "{md}");
        assert!(!md.contains("hunter"), "{md}");
        assert!(md.contains("(masked)"));
    }

    #[test]
    fn the_guard_is_a_caution_block_with_the_numbers() {
        let mut p = plan(vec![change(Action::Delete, "x")]);
        p.guard = Some(GuardTrip {
            deletions: 12,
            managed: 20,
            bundles_deleted: 2,
            bundles_managed: 2,
            message: "mass-deletion guard: it deletes every managed ProfileBundle".into(),
        });
        p.warnings
            .push(p.guard.as_ref().expect("set").message.clone());
        let md = render_comments(&p, &Context::default()).join("");
        assert!(md.contains("> [!CAUTION]"));
        assert!(md.contains("deletes or orphans 12 of 20 managed objects, and 2 of 2"));
        assert!(
            !md.contains("#### :warning: Warnings"),
            "not repeated as a warning"
        );
    }

    #[test]
    fn long_plans_split_into_numbered_parts_under_the_limit_with_headers_repeated() {
        let changes: Vec<Change> = (0..400)
            .map(|i| change(Action::Create, &format!("repo-{i:04}")))
            .collect();
        let ctx = Context {
            base: Some("a".repeat(40)),
            head: Some("b".repeat(40)),
            offline: true,
        };
        let parts = render_comments_within(&plan(changes), &ctx, 5_000);
        assert!(parts.len() > 3, "{}", parts.len());
        let n = parts.len();
        for (i, part) in parts.iter().enumerate() {
            assert!(part.chars().count() <= 5_000, "part {i} is {}", part.len());
            assert!(part.starts_with(MARKER));
            assert!(part.contains(&format!("(part {} of {n})", i + 1)), "{part}");
            assert!(part.contains("| kind | object | refs | why |"), "{part}");
            assert!(part.contains("offline: against the state base would produce"));
        }
        let all = parts.join("");
        for i in 0..400 {
            assert!(
                all.contains(&format!("`team-a/repo-{i:04}`")),
                "row {i} kept"
            );
        }
    }

    #[test]
    fn fences_outgrow_backticks_in_values() {
        assert_eq!(fence_for("no ticks"), "```");
        assert_eq!(fence_for("a ```` b"), "`````");
    }

    #[test]
    fn a_unit_longer_than_a_comment_is_cut_not_lost() {
        let bodies = pack(vec![Unit::new("x".repeat(10_000))], 3_000);
        assert_eq!(bodies.len(), 1);
        assert!(bodies[0].chars().count() <= 3_000);
        assert!(bodies[0].contains("(cut:"));
    }
}
