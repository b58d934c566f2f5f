//! Signed commits (issue 14, part 6): keys generated in the test (gpg, ssh-keygen), commits
//! signed by the real `git`, decided by the verifier and by the pipeline's fetch, which
//! refuses a commit before reading a file of it.

use pbsync::engine::{Context, Error};
use pbsync::source::verify::{Kind, Refusal, Verifier};
use pbsync_devkit::testkit::ScratchRepo;
use pbsync_devkit::testkit::signing::{self, GpgKey, Signing, SshKey};

fn verifier(files: &[&std::path::Path]) -> Verifier {
    let files: Vec<_> = files.iter().map(|p| p.to_path_buf()).collect();
    Verifier::from_files(&files).expect("keys load")
}

fn decide(v: &Verifier, repo: &ScratchRepo, commit: git2::Oid) -> Result<String, Refusal> {
    v.verify_commit(repo.git(), commit).map(|s| s.to_string())
}

/// A repository with one file; nothing committed yet.
fn repo() -> ScratchRepo {
    let repo = ScratchRepo::new();
    repo.write("README.md", "signed commits\n");
    repo
}

#[test]
fn a_commit_signed_with_gpg_by_a_configured_key_verifies_naming_the_key() {
    let key = GpgKey::generate("Deploy <deploy@example.com>");
    let repo = repo();
    let commit = signing::commit(&repo, "signed", Signing::Gpg(&key));
    let signer = verifier(&[key.public_key_file()])
        .verify_commit(repo.git(), commit)
        .expect("verified");
    assert_eq!(signer.kind, Kind::OpenPgp);
    assert_eq!(signer.key, key.fingerprint);
    assert_eq!(signer.identity, "Deploy <deploy@example.com>");
}

#[test]
fn a_commit_signed_by_a_gpg_signing_subkey_verifies() {
    let key = GpgKey::with_subkey("Release <release@example.com>");
    let repo = repo();
    let commit = signing::commit(&repo, "signed by the subkey", Signing::Gpg(&key));
    let signer = verifier(&[key.public_key_file()])
        .verify_commit(repo.git(), commit)
        .expect("verified");
    assert_ne!(
        signer.key, key.fingerprint,
        "the subkey signed, not the primary"
    );
    assert_eq!(signer.identity, "Release <release@example.com>");
}

#[test]
fn a_commit_signed_with_ssh_by_an_allowed_signer_verifies() {
    let key = SshKey::generate("ci@example.com");
    let repo = repo();
    let commit = signing::commit(&repo, "signed", Signing::Ssh(&key));
    let signer = verifier(&[&key.allowed_signers_file()])
        .verify_commit(repo.git(), commit)
        .expect("verified");
    assert_eq!(signer.kind, Kind::Ssh);
    assert!(signer.key.starts_with("SHA256:"), "{signer}");
    assert_eq!(signer.identity, "ci@example.com");
}

#[test]
fn an_unsigned_commit_is_refused() {
    let key = GpgKey::generate("Deploy <deploy@example.com>");
    let repo = repo();
    let commit = signing::commit(&repo, "unsigned", Signing::Unsigned);
    let refusal = decide(&verifier(&[key.public_key_file()]), &repo, commit).expect_err("refused");
    assert!(matches!(refusal, Refusal::Unsigned), "{refusal}");
}

#[test]
fn commits_signed_by_unknown_keys_are_refused_naming_the_key() {
    let trusted_gpg = GpgKey::generate("Deploy <deploy@example.com>");
    let trusted_ssh = SshKey::generate("ci@example.com");
    let v = verifier(&[
        trusted_gpg.public_key_file(),
        &trusted_ssh.allowed_signers_file(),
    ]);
    let stranger_gpg = GpgKey::generate("Mallory <mallory@example.com>");
    let stranger_ssh = SshKey::generate("mallory@example.com");
    let repo = repo();

    let commit = signing::commit(&repo, "by mallory", Signing::Gpg(&stranger_gpg));
    match decide(&v, &repo, commit) {
        Err(Refusal::UnknownKey { kind, key }) => {
            assert_eq!(kind, Kind::OpenPgp);
            assert_eq!(key, stranger_gpg.fingerprint);
        }
        other => panic!("not refused as unknown: {other:?}"),
    }
    let commit = signing::commit(&repo, "by mallory over ssh", Signing::Ssh(&stranger_ssh));
    let refusal = decide(&v, &repo, commit).expect_err("refused");
    assert!(
        matches!(&refusal, Refusal::UnknownKey { kind: Kind::Ssh, key } if key.starts_with("SHA256:")),
        "{refusal}"
    );
}

#[test]
fn tampered_commits_are_refused_for_both_kinds_of_signature() {
    let gpg = GpgKey::generate("Deploy <deploy@example.com>");
    let ssh = SshKey::generate("ci@example.com");
    let v = verifier(&[gpg.public_key_file(), &ssh.allowed_signers_file()]);
    let repo = repo();
    for (signing, kind) in [
        (Signing::Gpg(&gpg), Kind::OpenPgp),
        (Signing::Ssh(&ssh), Kind::Ssh),
    ] {
        let signed = signing::commit(&repo, "reviewed change", signing);
        assert!(decide(&v, &repo, signed).is_ok(), "the original verifies");
        let forged = signing::tamper(&repo, signed, |text| {
            text.replace("reviewed change", "reviewed change, and more")
        });
        match decide(&v, &repo, forged) {
            Err(Refusal::BadSignature { kind: k, .. }) => assert_eq!(k, kind),
            other => panic!("{kind}: tampered commit not refused: {other:?}"),
        }
    }
}

#[test]
fn the_fetch_refuses_a_commit_before_reading_it_and_reads_a_signed_one() {
    let key = SshKey::generate("ci@example.com");
    let repo = repo();
    let mut ctx = Context::new(repo.path(), "HEAD", "");
    ctx.verify = Some(std::sync::Arc::new(verifier(
        &[&key.allowed_signers_file()],
    )));

    let signed = signing::commit(&repo, "signed", Signing::Ssh(&key));
    assert_eq!(ctx.fetch().expect("read").revision, signed.to_string());

    let unsigned = signing::commit(&repo, "unsigned", Signing::Unsigned);
    let err = ctx.fetch().expect_err("refused");
    assert_eq!(err.stage().as_str(), "verify");
    assert!(!err.is_retryable(), "final for this commit");
    match &err {
        Error::SignatureRefused { commit, reason } => {
            assert_eq!(*commit, unsigned.to_string());
            assert!(matches!(reason, Refusal::Unsigned));
        }
        other => panic!("not a signature refusal: {other}"),
    }
    assert_eq!(
        pbsync_core::error_chain(&err),
        format!(
            "commit {unsigned} is refused: its signature is not trusted: the commit is not signed"
        )
    );
}

#[test]
fn a_key_file_that_is_not_a_key_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("keys.asc");
    std::fs::write(
        &bad,
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n-----END PGP PUBLIC KEY BLOCK-----\n",
    )
    .expect("write");
    let err = Verifier::from_files(std::slice::from_ref(&bad)).expect_err("invalid");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: not an OpenPGP public key", bad.display())),
        "{err}"
    );
    let missing = dir.path().join("missing.asc");
    let err = Verifier::from_files(&[missing]).expect_err("missing");
    assert!(err.to_string().contains("missing.asc"), "{err}");
}
