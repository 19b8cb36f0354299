//! Commit signature verification: a commit is accepted only with an SSH signature
//! (`gpg.format=ssh`, namespace `git`) by a key of the GitSync's allowed signers. GPG
//! signatures are not supported and are refused like unsigned commits. No client required.

use git2::{Oid, Repository};
use ssh_key::{PublicKey, SshSig};

/// The SSH signature namespace git uses for commits.
const GIT_NAMESPACE: &str = "git";

/// One line of an allowed-signers list: the principal and its key.
#[derive(Clone, Debug)]
pub struct AllowedSigner {
    /// Who the key belongs to (the first field of the line).
    pub principal: String,
    /// The key.
    pub key: PublicKey,
}

/// Parses allowed-signers lines (`principal [options] keytype base64 [comment]`), skipping
/// blank lines and `#` comments.
pub fn parse_allowed_signers(lines: &[String]) -> Result<Vec<AllowedSigner>, String> {
    let mut signers = Vec::new();
    for line in lines.iter().flat_map(|entry| entry.lines()) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let key_at = fields
            .iter()
            .position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-") || f.starts_with("sk-"))
            .filter(|&at| at >= 1 && at + 1 < fields.len())
            .ok_or_else(|| {
                format!("spec.verify.allowedSigners: {line:?} is not `principal keytype base64`")
            })?;
        let key = PublicKey::from_openssh(&format!("{} {}", fields[key_at], fields[key_at + 1]))
            .map_err(|error| {
                format!(
                    "spec.verify.allowedSigners: the key of {} is invalid: {error}",
                    fields[0]
                )
            })?;
        signers.push(AllowedSigner {
            principal: fields[0].to_owned(),
            key,
        });
    }
    if signers.is_empty() {
        return Err("spec.verify.allowedSigners lists no key".to_owned());
    }
    Ok(signers)
}

/// Checks that `commit` carries an SSH signature by one of `signers`; returns the principal
/// that signed it, or why the commit is refused.
pub fn verify_commit(
    repo: &Repository,
    commit: Oid,
    signers: &[AllowedSigner],
) -> Result<String, String> {
    let (signature, signed) = repo
        .extract_signature(&commit, None)
        .map_err(|_| "it is not signed; sign commits with an allowed SSH key".to_owned())?;
    let signature =
        std::str::from_utf8(&signature).map_err(|_| "its signature is not text".to_owned())?;
    if signature.contains("BEGIN PGP SIGNATURE") {
        return Err(
            "it has a GPG signature; only SSH signatures (gpg.format=ssh) are supported".to_owned(),
        );
    }
    let signature = SshSig::from_pem(signature)
        .map_err(|error| format!("its SSH signature cannot be read: {error}"))?;
    let signer = signers
        .iter()
        .find(|s| s.key.key_data() == signature.public_key())
        .ok_or_else(|| {
            "it is signed by a key that is not in spec.verify.allowedSigners".to_owned()
        })?;
    signer
        .key
        .verify(GIT_NAMESPACE, &signed, &signature)
        .map_err(|error| {
            format!(
                "its signature by {} does not verify: {error}",
                signer.principal
            )
        })?;
    Ok(signer.principal.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP+XsMd0C5tEVScGdeJZJ6bEWIEb3r2INUFxs60nen0+";

    #[test]
    fn allowed_signers_lines_parse_with_options_comments_and_blanks() {
        let lines = vec![
            format!("# the release team\n\nalice@example.com {KEY} laptop"),
            format!("bob@example.com namespaces=\"git\" {KEY}"),
        ];
        let signers = parse_allowed_signers(&lines).unwrap();
        let principals: Vec<&str> = signers.iter().map(|s| s.principal.as_str()).collect();
        assert_eq!(principals, ["alice@example.com", "bob@example.com"]);
    }

    #[test]
    fn malformed_or_empty_allowed_signers_are_refused_with_the_field_named() {
        for lines in [
            vec![KEY.to_owned()],
            vec!["alice@example.com ssh-ed25519 not-base64".to_owned()],
            vec!["# only a comment".to_owned()],
        ] {
            let error = parse_allowed_signers(&lines).unwrap_err();
            assert!(error.starts_with("spec.verify.allowedSigners"), "{error}");
        }
    }
}
