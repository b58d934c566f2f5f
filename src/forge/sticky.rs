//! Sticky comments: the one comment (or the few parts of one, when it is over the provider's
//! limit) pbsync keeps on a pull request, found again by the marker its body starts with,
//! edited in place, grown or shrunk, never duplicated. What to do is decided here, purely
//! ([`steps`]); [`sync`] does it.

use super::{Comment, Error, Forge};

/// One change to a pull request's comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Replace the body of an earlier comment.
    Update {
        /// The comment.
        id: u64,
        /// Its new body.
        body: String,
    },
    /// Add a comment.
    Create {
        /// Its body.
        body: String,
    },
    /// Delete a comment no longer needed.
    Delete {
        /// The comment.
        id: u64,
    },
}

/// What [`sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Comments added.
    pub created: usize,
    /// Comments edited.
    pub updated: usize,
    /// Comments deleted.
    pub deleted: usize,
    /// Comments already right.
    pub unchanged: usize,
}

impl std::fmt::Display for Synced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} created, {} updated, {} deleted, {} unchanged",
            self.created, self.updated, self.deleted, self.unchanged
        )
    }
}

/// The steps that make the comments starting with `marker` (oldest first) read `parts`:
/// the i-th of ours becomes the i-th part (edited only when it differs), missing parts are
/// added, ours beyond the parts are deleted. Other comments are never touched.
pub fn steps(existing: &[Comment], marker: &str, parts: &[String]) -> (Vec<Step>, Synced) {
    let ours: Vec<&Comment> = existing
        .iter()
        .filter(|c| c.body.starts_with(marker))
        .collect();
    let mut out = Vec::new();
    let mut synced = Synced::default();
    for (i, part) in parts.iter().enumerate() {
        match ours.get(i) {
            Some(c) if c.body == *part => synced.unchanged += 1,
            Some(c) => {
                synced.updated += 1;
                out.push(Step::Update {
                    id: c.id,
                    body: part.clone(),
                });
            }
            None => {
                synced.created += 1;
                out.push(Step::Create { body: part.clone() });
            }
        }
    }
    for c in ours.iter().skip(parts.len()) {
        synced.deleted += 1;
        out.push(Step::Delete { id: c.id });
    }
    (out, synced)
}

/// Makes pull request `number`'s comments starting with `marker` read `parts` (see
/// [`steps`]).
pub async fn sync(
    forge: &Forge,
    number: u64,
    marker: &str,
    parts: &[String],
) -> Result<Synced, Error> {
    let existing = forge.comments(number).await?;
    let (steps, synced) = steps(&existing, marker, parts);
    for step in steps {
        match step {
            Step::Update { id, body } => forge.update_comment(number, id, &body).await?,
            Step::Create { body } => {
                forge.create_comment(number, &body).await?;
            }
            Step::Delete { id } => forge.delete_comment(number, id).await?,
        }
    }
    Ok(synced)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "<!-- m -->";

    fn c(id: u64, body: &str) -> Comment {
        Comment {
            id,
            body: body.into(),
        }
    }

    fn parts(bodies: &[&str]) -> Vec<String> {
        bodies.iter().map(|b| format!("{M}\n{b}")).collect()
    }

    #[test]
    fn the_first_plan_creates_its_parts() {
        let (s, n) = steps(&[c(1, "LGTM")], M, &parts(&["a", "b"]));
        assert_eq!(
            s,
            vec![
                Step::Create {
                    body: format!("{M}\na")
                },
                Step::Create {
                    body: format!("{M}\nb")
                }
            ]
        );
        assert_eq!(n.created, 2);
    }

    #[test]
    fn a_later_plan_edits_in_place_and_leaves_equal_parts_and_other_comments_alone() {
        let existing = [
            c(1, &format!("{M}\na")),
            c(2, "a reviewer's comment"),
            c(3, &format!("{M}\nold")),
        ];
        let (s, n) = steps(&existing, M, &parts(&["a", "new"]));
        assert_eq!(
            s,
            vec![Step::Update {
                id: 3,
                body: format!("{M}\nnew")
            }]
        );
        assert_eq!((n.unchanged, n.updated, n.created, n.deleted), (1, 1, 0, 0));
    }

    #[test]
    fn a_shorter_plan_deletes_the_parts_it_no_longer_needs() {
        let existing = [
            c(1, &format!("{M}\na")),
            c(2, &format!("{M}\nb")),
            c(3, &format!("{M}\nc")),
        ];
        let (s, _) = steps(&existing, M, &parts(&["a"]));
        assert_eq!(s, vec![Step::Delete { id: 2 }, Step::Delete { id: 3 }]);
    }

    #[test]
    fn the_same_plan_twice_changes_nothing() {
        let existing = [c(7, &format!("{M}\na"))];
        let (s, n) = steps(&existing, M, &parts(&["a"]));
        assert!(s.is_empty());
        assert_eq!(n.unchanged, 1);
    }
}
