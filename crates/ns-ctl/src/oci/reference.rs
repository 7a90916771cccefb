//! Image references as Docker reads them: `[REGISTRY/]REPO[:TAG][@sha256:DIGEST]`. A first
//! component with a `.` or `:`, or `localhost`, names the registry; otherwise it is Docker
//! Hub (`docker.io`, served by registry-1.docker.io), where a one-component repository is
//! an official image under `library/`.

use ns_core::{Error, Result};

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written (`docker.io` by default), with its port if any.
    pub registry: String,
    /// The repository in the registry (`library/debian`).
    pub repo: String,
    /// The tag (`latest` when neither a tag nor a digest is given).
    pub tag: Option<String>,
    /// `sha256:HEX`, if given: what the manifest must hash to.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| Error::invalid("REF", s, why);
        let (rest, digest) = match s.rsplit_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(|_| bad("the digest is not sha256:<64 hex digits>"))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (rest, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (rest, None),
        };
        let (registry, repo) = match rest.split_once('/') {
            Some((first, repo))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), repo.to_string())
            }
            _ => ("docker.io".to_string(), rest.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" => "docker.io".to_string(),
            _ => registry,
        };
        let repo = if registry == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        if !repo_is_valid(&repo) {
            return Err(bad("not a repository name (lower-case letters, digits, . _ - and / between components)"));
        }
        if let Some(t) = &tag {
            let ok = t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok || t.is_empty() {
                return Err(bad("not a tag (letters, digits, _ . -, at most 128)"));
            }
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repo,
            tag,
            digest,
        })
    }

    /// The host the v2 API is served from (Docker Hub's is not docker.io).
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" => "registry-1.docker.io",
            r => r,
        }
    }

    /// Is the registry on this host (127.0.0.0/8, ::1, localhost)? Docker talks plain HTTP
    /// to those.
    pub fn is_local(&self) -> bool {
        let host = match self.registry.strip_prefix('[') {
            Some(r) => r.split_once(']').map_or(r, |(h, _)| h),
            None => self
                .registry
                .rsplit_once(':')
                .map_or(&self.registry[..], |(h, _)| h),
        };
        host == "localhost"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback())
            || host
                .parse::<std::net::Ipv6Addr>()
                .is_ok_and(|a| a.is_loopback())
    }

    /// What to ask the registry's manifests endpoint for: the digest if given (Docker
    /// ignores the tag then), else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The default machine name: the repository's last component.
    pub fn default_name(&self) -> &str {
        self.repo.rsplit('/').next().unwrap_or(&self.repo)
    }
}

/// Repository components: lower-case letters and digits, joined by `.`, `_`, `__` or `-`s.
fn repo_is_valid(repo: &str) -> bool {
    repo.len() <= 255
        && repo.split('/').all(|c| {
            c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        })
}

/// A digest we can check: `sha256:` and 64 lower-case hex digits (also what makes it safe
/// as a file name under blobs/sha256/).
pub fn check_digest(d: &str) -> Result<&str> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ if d.contains(':') && !d.starts_with("sha256:") => Err(Error::setup(format!(
            "digest {d}: only sha256 digests are supported"
        ))),
        _ => Err(Error::setup(format!(
            "bad digest {d}: not sha256:<64 hex digits>"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap();
        (r.registry, r.repo, r.tag, r.digest)
    }

    #[test]
    fn docker_defaults() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            r("busybox"),
            (
                "docker.io".into(),
                "library/busybox".into(),
                some("latest"),
                None
            )
        );
        assert_eq!(
            r("user/app:1.2"),
            ("docker.io".into(), "user/app".into(), some("1.2"), None)
        );
        assert_eq!(
            r("localhost/app"),
            ("localhost".into(), "app".into(), some("latest"), None)
        );
        assert_eq!(
            r("127.0.0.1:5000/a/b:t"),
            ("127.0.0.1:5000".into(), "a/b".into(), some("t"), None)
        );
        let d = format!("sha256:{}", "ab".repeat(32));
        let x = Reference::parse(&format!("quay.io/x/y@{d}")).unwrap();
        assert_eq!(
            (x.tag.as_deref(), x.digest.as_deref()),
            (None, Some(d.as_str()))
        );
        assert_eq!(x.manifest_ref(), d);
        let x = Reference::parse(&format!("quay.io/x/y:v1@{d}")).unwrap();
        assert_eq!(x.manifest_ref(), d);
        assert_eq!(
            Reference::parse("debian").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(Reference::parse("a/b/c").unwrap().default_name(), "c");
    }

    #[test]
    fn local_registries() {
        let local = |s: &str| Reference::parse(s).unwrap().is_local();
        assert!(local("127.0.0.1:5000/a"));
        assert!(local("127.1.2.3/a"));
        assert!(local("localhost:80/a"));
        assert!(local("[::1]:5000/a"));
        assert!(!local("quay.io/a"));
        assert!(!local("10.0.0.1:5000/a"));
        assert!(!local("busybox"));
    }

    #[test]
    fn bad_references() {
        for s in [
            "Upper",
            "a//b",
            "a/-b",
            "a:",
            "a:-x",
            "a@sha256:12",
            "a@md5:0123",
            "",
            "quay.io/",
        ] {
            assert!(Reference::parse(s).is_err(), "{s}");
        }
    }
}
