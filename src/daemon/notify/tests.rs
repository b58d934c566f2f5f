//! The decisions and payloads of notifications, on explicit instants (no clock, no sleep).

use super::*;
use pbsync_core::plan::comment::ChangeNote;

fn failed(revision: Option<&str>, stage: &str, message: &str) -> Event {
    Event::Failed {
        revision: revision.map(str::to_string),
        stage: stage.into(),
        message: message.into(),
        violations: Vec::new(),
    }
}

fn applied(revision: &str, acted: bool) -> Event {
    Event::Applied {
        revision: revision.into(),
        summary: if acted { "2 created" } else { "nothing to do" }.into(),
        acted,
        note: ChangeNote {
            count: 0,
            sha256: String::new(),
            changes: Vec::new(),
        },
    }
}

fn health(revision: &str, state: Health, line: &str) -> Event {
    Event::Health {
        revision: revision.into(),
        state,
        line: line.into(),
    }
}

fn notice(what: What, event: Event) -> Notice {
    Notice {
        what,
        event,
        at: "2026-03-01T12:00:00Z".parse().expect("timestamp"),
    }
}

fn alone(n: Notice) -> Batch<Notice> {
    Batch {
        latest: n,
        earlier: Vec::new(),
        suppressed: 0,
    }
}

const REV: &str = "0123456789abcdef0123456789abcdef01234567";
const REV2: &str = "fedcba9876543210fedcba9876543210fedcba98";

// ---------------------------------------------------------------------------------------
// Deduper
// ---------------------------------------------------------------------------------------

#[test]
fn a_failure_repeated_by_every_pass_is_told_once() {
    let t = Instant::now();
    let mut d = Deduper::new(Some(Duration::from_secs(3600)));
    let e = failed(Some(REV), "apply", "the API server did not answer");
    assert_eq!(d.observe(&e, t), Some(What::Failed { again: false }));
    // Every retry reports it again, with an Applying before it: still the same failure.
    for i in 1..5 {
        let now = t + Duration::from_secs(60 * i);
        assert_eq!(
            d.observe(
                &Event::Applying {
                    revision: REV.into()
                },
                now
            ),
            Some(What::Applying)
        );
        assert_eq!(d.observe(&e, now), None, "pass {i}");
    }
}

#[test]
fn the_same_failure_is_told_again_once_another_came_in_between() {
    let t = Instant::now();
    let mut d = Deduper::new(None);
    let a = failed(Some(REV), "apply", "timeout");
    let b = failed(Some(REV), "apply", "403 forbidden");
    assert_eq!(d.observe(&a, t), Some(What::Failed { again: false }));
    assert_eq!(d.observe(&b, t), Some(What::Failed { again: false }));
    assert_eq!(d.observe(&a, t), Some(What::Failed { again: false }));
    // Another stage, or another commit, is another failure too.
    assert!(
        d.observe(&failed(Some(REV), "observe", "timeout"), t)
            .is_some()
    );
    assert!(
        d.observe(&failed(Some(REV2), "observe", "timeout"), t)
            .is_some()
    );
}

#[test]
fn the_same_failure_is_told_again_after_a_success_in_between() {
    let t = Instant::now();
    let mut d = Deduper::new(None);
    let a = failed(Some(REV2), "parse", "bad yaml");
    assert!(d.observe(&a, t).is_some());
    assert!(d.observe(&applied(REV, true), t).is_some());
    assert_eq!(d.observe(&a, t), Some(What::Failed { again: false }));
}

#[test]
fn the_same_failure_is_told_again_only_after_the_repeat_interval() {
    let t = Instant::now();
    let hour = Duration::from_secs(3600);
    let e = failed(None, "fetch", "no route to host");
    let mut d = Deduper::new(Some(hour));
    assert_eq!(d.observe(&e, t), Some(What::Failed { again: false }));
    assert_eq!(d.observe(&e, t + hour / 2), None);
    assert_eq!(d.observe(&e, t + hour), Some(What::Failed { again: true }));
    // The interval counts from the last time it was told.
    assert_eq!(d.observe(&e, t + hour + hour / 2), None);
    assert_eq!(
        d.observe(&e, t + hour * 2),
        Some(What::Failed { again: true })
    );

    let mut never = Deduper::new(None);
    assert!(never.observe(&e, t).is_some());
    assert_eq!(never.observe(&e, t + hour * 100), None);
}

#[test]
fn the_first_apply_after_failures_is_a_recovery_and_later_ones_are_plain_applies() {
    let t = Instant::now();
    let mut d = Deduper::new(None);
    assert_eq!(
        d.observe(&applied(REV, true), t),
        Some(What::Applied { acted: true })
    );
    d.observe(&failed(Some(REV2), "validate", "2 violations"), t);
    assert_eq!(
        d.observe(&applied(REV, false), t),
        Some(What::Recovered {
            from: "validate".into()
        })
    );
    assert_eq!(
        d.observe(&applied(REV, false), t),
        Some(What::Applied { acted: false })
    );
}

#[test]
fn a_fetch_recovers_a_fetch_failure_and_nothing_else() {
    let t = Instant::now();
    let fetched = Event::Fetched {
        revision: REV.into(),
    };
    let mut d = Deduper::new(None);
    assert_eq!(d.observe(&fetched, t), None, "no failure to recover from");
    d.observe(&failed(None, "fetch", "no route to host"), t);
    assert_eq!(
        d.observe(&fetched, t),
        Some(What::Recovered {
            from: "fetch".into()
        })
    );
    // A commit that failed to apply is not recovered by fetching it again.
    d.observe(&failed(Some(REV), "apply", "timeout"), t);
    assert_eq!(d.observe(&fetched, t), None);
    assert_eq!(
        d.observe(&applied(REV, true), t),
        Some(What::Recovered {
            from: "apply".into()
        })
    );
}

#[test]
fn health_counts_only_when_its_state_changes() {
    let t = Instant::now();
    let mut d = Deduper::new(None);
    assert_eq!(
        d.observe(&health(REV, Health::InProgress, "waiting"), t),
        Some(What::Health {
            from: None,
            to: Health::InProgress,
            turned_failed: false,
            recovered: false
        })
    );
    // Another culprit line in the same state is no change.
    assert_eq!(
        d.observe(&health(REV, Health::InProgress, "still waiting"), t),
        None
    );
    assert_eq!(
        d.observe(&health(REV, Health::Failed, "404"), t),
        Some(What::Health {
            from: Some(Health::InProgress),
            to: Health::Failed,
            turned_failed: true,
            recovered: false
        })
    );
    // Failed, working on it, failed again: it never recovered, so it did not turn failed.
    d.observe(&health(REV, Health::InProgress, ""), t);
    assert_eq!(
        d.observe(&health(REV, Health::Failed, "404"), t),
        Some(What::Health {
            from: Some(Health::InProgress),
            to: Health::Failed,
            turned_failed: false,
            recovered: false
        })
    );
    d.observe(&health(REV, Health::InProgress, ""), t);
    assert_eq!(
        d.observe(&health(REV2, Health::Current, ""), t),
        Some(What::Health {
            from: Some(Health::InProgress),
            to: Health::Current,
            turned_failed: false,
            recovered: true
        })
    );
}

// ---------------------------------------------------------------------------------------
// Filter
// ---------------------------------------------------------------------------------------

fn every_what() -> Vec<What> {
    let h = |to, turned_failed, recovered| What::Health {
        from: Some(Health::InProgress),
        to,
        turned_failed,
        recovered,
    };
    vec![
        What::Applying,
        What::Applied { acted: false },
        What::Applied { acted: true },
        What::Failed { again: false },
        What::Failed { again: true },
        What::Recovered {
            from: "parse".into(),
        },
        h(Health::Failed, true, false),
        h(Health::Current, false, true),
        h(Health::Current, false, false),
        h(Health::Failed, false, false),
    ]
}

fn admitted(f: Filter) -> Vec<What> {
    every_what().into_iter().filter(|w| f.admits(w)).collect()
}

#[test]
fn failures_admit_failed_passes_health_turning_failed_and_the_recoveries() {
    let w = admitted(Filter::Failures);
    assert_eq!(
        w,
        vec![
            What::Failed { again: false },
            What::Failed { again: true },
            What::Recovered {
                from: "parse".into()
            },
            What::Health {
                from: Some(Health::InProgress),
                to: Health::Failed,
                turned_failed: true,
                recovered: false
            },
            What::Health {
                from: Some(Health::InProgress),
                to: Health::Current,
                turned_failed: false,
                recovered: true
            },
        ]
    );
}

#[test]
fn changes_add_applies_that_acted_and_every_health_change() {
    let w = admitted(Filter::Changes);
    assert!(w.contains(&What::Applied { acted: true }));
    assert!(!w.contains(&What::Applied { acted: false }));
    assert!(!w.contains(&What::Applying));
    assert_eq!(
        w.iter()
            .filter(|w| matches!(w, What::Health { .. }))
            .count(),
        4
    );
    assert!(admitted(Filter::Failures).iter().all(|f| w.contains(f)));
}

#[test]
fn all_admits_everything() {
    assert_eq!(admitted(Filter::All), every_what());
}

// ---------------------------------------------------------------------------------------
// RateLimiter
// ---------------------------------------------------------------------------------------

#[test]
fn the_first_item_goes_at_once_and_what_comes_within_the_interval_is_folded() {
    let t = Instant::now();
    let s = Duration::from_secs(1);
    let mut r = RateLimiter::new(s * 10);
    assert_eq!(r.wait(t), None, "nothing held");
    r.offer(1);
    assert_eq!(r.wait(t), Some(Duration::ZERO));
    assert_eq!(
        r.take(t),
        Some(Batch {
            latest: 1,
            earlier: vec![],
            suppressed: 0
        })
    );
    r.offer(2);
    r.offer(3);
    r.offer(4);
    assert_eq!(r.wait(t + s * 4), Some(s * 6));
    assert_eq!(r.take(t + s * 4), None);
    assert_eq!(
        r.take(t + s * 10),
        Some(Batch {
            latest: 4,
            earlier: vec![2, 3],
            suppressed: 2
        })
    );
    assert_eq!(r.take(t + s * 30), None, "nothing left");
    // After a quiet period the next one goes at once again.
    r.offer(5);
    assert_eq!(r.take(t + s * 30).map(|b| b.latest), Some(5));
}

#[test]
fn a_zero_interval_lets_every_item_through_alone() {
    let t = Instant::now();
    let mut r = RateLimiter::new(Duration::ZERO);
    for i in 0..3 {
        r.offer(i);
        assert_eq!(
            r.take(t),
            Some(Batch {
                latest: i,
                earlier: vec![],
                suppressed: 0
            })
        );
    }
}

#[test]
fn items_beyond_the_held_limit_are_counted_not_kept() {
    let t = Instant::now();
    let mut r = RateLimiter::new(Duration::from_secs(60));
    r.offer(0);
    r.take(t);
    for i in 1..=HELD + 5 {
        r.offer(i);
    }
    let b = r
        .take(t + Duration::from_secs(60))
        .expect("the interval ended");
    assert_eq!(b.latest, HELD + 5);
    assert_eq!(b.earlier.len(), HELD - 1);
    assert_eq!(b.earlier.first(), Some(&6));
    assert_eq!(b.suppressed, HELD + 4);
}

// ---------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------

#[test]
fn a_cloudevent_has_the_required_attributes_and_the_failure_as_data() {
    let mut e = failed(Some(REV), "validate", "commit is invalid: 2 violations");
    if let Event::Failed { violations, .. } = &mut e {
        violations.push("bundles/a.yaml:3: R1-schema: missing spec".into());
        violations.push("bundles/b.yaml:9: R4-ref: dangling".into());
    }
    let v = cloudevent(
        &alone(notice(What::Failed { again: false }, e)),
        "hub-a",
        "id-1",
    );
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["id"], "id-1");
    assert_eq!(v["source"], "pbsync/hub-a");
    assert_eq!(v["type"], "ai.palette.pbsync.pass.failed");
    assert_eq!(v["subject"], REV);
    assert_eq!(v["time"], "2026-03-01T12:00:00Z");
    assert_eq!(v["datacontenttype"], "application/json");
    let d = &v["data"];
    assert_eq!(d["instance"], "hub-a");
    assert_eq!(d["outcome"], "failed");
    assert_eq!(d["revision"], REV);
    assert_eq!(d["stage"], "validate");
    assert_eq!(d["violationCount"], 2);
    assert_eq!(d["violations"][1], "bundles/b.yaml:9: R4-ref: dangling");
    assert_eq!(d["repeated"], false);
    assert_eq!(
        d["summary"],
        "failed at validate 0123456789ab: commit is invalid: 2 violations"
    );
    assert!(d.get("suppressed").is_none());
}

#[test]
fn a_cloudevent_of_a_fetch_failure_has_no_subject_and_an_encoded_source() {
    let v = cloudevent(
        &alone(notice(
            What::Failed { again: true },
            failed(None, "fetch", "no route to host"),
        )),
        "team a/b",
        "id-2",
    );
    assert!(v.get("subject").is_none(), "{v}");
    assert_eq!(v["source"], "pbsync/team%20a%2Fb");
    assert_eq!(v["data"]["revision"], Value::Null);
    assert_eq!(
        v["data"]["summary"],
        "still failed at fetch: no route to host"
    );
}

#[test]
fn recoveries_and_health_changes_have_their_own_types_and_data() {
    let recovered = cloudevent(
        &alone(notice(
            What::Recovered {
                from: "parse".into(),
            },
            applied(REV, true),
        )),
        "default",
        "id",
    );
    assert_eq!(recovered["type"], "ai.palette.pbsync.pass.recovered");
    assert_eq!(recovered["data"]["recoveredFrom"], "parse");
    assert_eq!(recovered["data"]["changes"], "2 created");

    let sick = cloudevent(
        &alone(notice(
            What::Health {
                from: Some(Health::Current),
                to: Health::Failed,
                turned_failed: true,
                recovered: false,
            },
            health(REV, Health::Failed, "HelmRepository team-a/charts: 404"),
        )),
        "default",
        "id",
    );
    assert_eq!(sick["type"], "ai.palette.pbsync.health.changed");
    assert_eq!(
        sick["data"]["health"],
        json!({"state": "failed", "previous": "current", "culprit": "HelmRepository team-a/charts: 404"})
    );
    assert_eq!(
        sick["data"]["summary"],
        "0123456789ab is unhealthy: HelmRepository team-a/charts: 404"
    );
}

fn folded() -> Batch<Notice> {
    Batch {
        latest: notice(
            What::Recovered {
                from: "apply".into(),
            },
            applied(REV2, true),
        ),
        earlier: vec![
            notice(
                What::Failed { again: false },
                failed(Some(REV), "apply", "timeout"),
            ),
            notice(
                What::Applying,
                Event::Applying {
                    revision: REV2.into(),
                },
            ),
        ],
        suppressed: 3,
    }
}

#[test]
fn a_folded_batch_tells_how_many_were_held_back_and_what_they_were() {
    let v = cloudevent(&folded(), "default", "id");
    assert_eq!(v["subject"], REV2);
    assert_eq!(v["data"]["suppressed"], 3);
    assert_eq!(
        v["data"]["earlier"],
        json!([
            "failed at apply 0123456789ab: timeout",
            "applying fedcba987654"
        ])
    );
    let s = slack(&folded(), "default");
    let text = s["text"].as_str().expect("text");
    assert!(
        text.ends_with(
            "\n_3 earlier held back by the rate limit: failed at apply 0123456789ab: timeout; applying fedcba987654_"
        ),
        "{text}"
    );
}

#[test]
fn a_slack_message_is_one_escaped_line_with_the_first_violations() {
    let e = Event::Failed {
        revision: Some(REV.into()),
        stage: "validate".into(),
        message: "commit is invalid: <5 violations> & more\nsecond line".into(),
        violations: (1..=5)
            .map(|i| format!("bundles/a.yaml:{i}: R1-schema: bad"))
            .collect(),
    };
    let v = slack(&alone(notice(What::Failed { again: false }, e)), "hub");
    assert_eq!(v.as_object().map(serde_json::Map::len), Some(1), "{v}");
    let text = v["text"].as_str().expect("text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "*pbsync hub* :x: failed at validate 0123456789ab: commit is invalid: &lt;5 violations&gt; &amp; more"
    );
    assert_eq!(lines[1], "• bundles/a.yaml:1: R1-schema: bad");
    assert_eq!(lines[3], "• bundles/a.yaml:3: R1-schema: bad");
    assert_eq!(lines[4], "• … 2 more");
    assert_eq!(lines.len(), 5);

    let ok = slack(
        &alone(notice(
            What::Recovered {
                from: "validate".into(),
            },
            applied(REV2, true),
        )),
        "hub",
    );
    assert_eq!(
        ok["text"],
        "*pbsync hub* :white_check_mark: recovered (after failing at validate): applied fedcba987654: 2 created"
    );
}

#[test]
fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
    // The example of Wikipedia's HMAC article.
    assert_eq!(
        signature(b"key", b"The quick brown fox jumps over the lazy dog"),
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
}
