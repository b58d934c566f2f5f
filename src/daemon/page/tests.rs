use super::*;
use crate::daemon::board::tests::{REPO, graph, key, report};
use pbsync_core::model::Kind;

fn outcome() -> LastOutcome {
    LastOutcome {
        result: "applied".into(),
        revision: Some("r1".into()),
        applied_revision: Some("r1".into()),
        applied_at: Some("2026-12-07T10:00:00Z".into()),
        message: "5 created".into(),
        at: "2026-12-07T10:00:00Z".into(),
        ..LastOutcome::default()
    }
}

#[test]
fn every_node_is_coloured_by_its_health_with_the_cause_to_hover_or_expand() {
    let board = Board::default();
    let g = graph("r1", REPO);
    let charts = key(Kind::HelmRepository, "charts");
    board.publish(
        g.clone(),
        report(&g, Some((charts, "failed to fetch index: 404 <script>"))),
    );
    let html = render("blue", &outcome(), &board);
    // Each bundle is a failed root, open, with its chain.
    assert!(
        html.contains(r#"<li class="root node state-failed" data-key="ProfileBundle team-a/chat" data-state="failed"><details open>"#),
        "{html}"
    );
    // The repository under it is failed with its cause, escaped.
    assert!(
        html.contains(r#"data-key="HelmRepository team-a/charts" data-state="failed""#),
        "{html}"
    );
    assert!(
        html.contains("failed to fetch index: 404 &lt;script&gt;"),
        "{html}"
    );
    assert!(
        !html.contains("<script>"),
        "no script, and nothing unescaped: {html}"
    );
    // The profile and definition are current.
    assert!(html.contains(r#"data-key="WorkloadProfile team-a/app" data-state="current""#));
    assert!(html.contains(r#"data-key="ComponentDefinition team-a/web" data-state="current""#));
    assert!(html.contains("no revision fully healthy yet"), "{html}");
}

#[test]
fn the_page_names_the_revision_applied_and_the_revision_healthy() {
    let board = Board::default();
    let g = graph("0123456789abcdef", REPO);
    board.publish(g.clone(), report(&g, None));
    let html = render("blue", &outcome(), &board);
    assert!(html.contains("<title>pbsync blue</title>"));
    assert!(
        html.contains(r#"<dd id="healthy"><code>0123456789ab</code> since "#),
        "{html}"
    );
    assert!(
        html.contains(r#"<dd id="applied"><code>r1</code> at 2026-12-07T10:00:00Z</dd>"#),
        "{html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external asset: {html}"
    );
}
