//! Reading a Studio archive (`.tar.gz`) into memory, refusing anything that could write
//! outside the target or exhaust it: absolute paths, `..` components, links, device files and
//! other special members, and members, totals or member counts over the limits.

use std::collections::BTreeSet;
use std::io::Read;

use super::Error;

/// Bounds on one archive (tar-bomb protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest member, in bytes (the parser's own file limit by default).
    pub max_member_bytes: u64,
    /// Largest sum of all members, in bytes.
    pub max_total_bytes: u64,
    /// Most members (files and directories).
    pub max_members: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_member_bytes: 8 * 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
            max_members: 2000,
        }
    }
}

/// One regular file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its path inside the archive, normalised (no `.` components, `/`-separated).
    pub path: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Checks one member's path: relative, no `..`, UTF-8. Returns it normalised.
fn check_path(raw: &[u8]) -> Result<String, Error> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let Ok(path) = std::str::from_utf8(raw) else {
        return Err(Error::UnsafeMember {
            member: shown,
            why: "its name is not UTF-8".into(),
        });
    };
    if path.starts_with('/') || path.starts_with('\\') || path.get(1..2) == Some(":") {
        return Err(Error::UnsafeMember {
            member: shown,
            why: "it has an absolute path".into(),
        });
    }
    let mut parts = Vec::new();
    for part in path.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::UnsafeMember {
                    member: shown,
                    why: "its path has a `..` component".into(),
                });
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Reads every regular file of a gzip-compressed tar archive, after checking every member.
pub fn read(reader: impl Read, limits: &Limits) -> Result<Vec<Member>, Error> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let entries = archive.entries().map_err(Error::NotAnArchive)?;
    let mut members = Vec::new();
    let mut seen = BTreeSet::new();
    let mut total: u64 = 0;
    for (count, entry) in entries.enumerate() {
        let mut entry = entry.map_err(Error::NotAnArchive)?;
        if count >= limits.max_members {
            return Err(Error::TooManyMembers {
                limit: limits.max_members,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let path = check_path(&raw)?;
        let kind = entry.header().entry_type();
        let refuse = |why: String| Error::UnsafeMember {
            member: path.clone(),
            why,
        };
        match kind {
            tar::EntryType::Directory | tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Regular => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let what = if kind == tar::EntryType::Symlink {
                    "a symbolic link"
                } else {
                    "a hard link"
                };
                return Err(refuse(format!(
                    "it is {what} (to {target:?}); links are refused"
                )));
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(refuse(
                    "it is a device file; only regular files and directories are accepted".into(),
                ));
            }
            other => {
                return Err(refuse(format!(
                    "it is a special member ({other:?}); only regular files and directories are accepted"
                )));
            }
        }
        let size = entry.header().size().map_err(Error::NotAnArchive)?;
        if size > limits.max_member_bytes {
            return Err(Error::MemberTooLarge {
                member: path,
                size,
                limit: limits.max_member_bytes,
            });
        }
        // The header may lie: read at most one byte past the limit and check again.
        let mut bytes = Vec::new();
        (&mut entry)
            .take(limits.max_member_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(Error::NotAnArchive)?;
        let got = bytes.len() as u64;
        if got > limits.max_member_bytes {
            return Err(Error::MemberTooLarge {
                member: path,
                size: got,
                limit: limits.max_member_bytes,
            });
        }
        total += got;
        if total > limits.max_total_bytes {
            return Err(Error::TooLarge {
                limit: limits.max_total_bytes,
            });
        }
        if !seen.insert(path.clone()) {
            return Err(refuse("it appears twice in the archive".into()));
        }
        members.push(Member { path, bytes });
    }
    members.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalised() {
        assert_eq!(
            check_path(b"./a//b/./c.yaml").ok(),
            Some("a/b/c.yaml".into())
        );
    }

    #[test]
    fn absolute_and_parent_paths_are_refused() {
        for bad in [
            &b"/etc/passwd"[..],
            b"a/../../b",
            b"..",
            b"C:/x",
            b"a\\..\\b",
        ] {
            assert!(check_path(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
