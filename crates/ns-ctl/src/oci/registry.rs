//! The pull half of the OCI distribution API (v2), on ureq (blocking, rustls; no async
//! runtime): manifests and blobs by GET, anonymous, or with a bearer token fetched from the
//! realm a 401's `WWW-Authenticate: Bearer realm=…,service=…,scope=…` names. A registry on
//! this host (127.0.0.0/8, ::1, localhost) is spoken to in plain HTTP, as Docker does;
//! others over HTTPS, its certificate checked unless `--tls-verify=no`.

use std::io::Read;
use std::time::Duration;

use ns_core::{Error, Result};
use ureq::http::Response;
use ureq::Body;

use super::image::{check_bytes, Descriptor, Source, ACCEPT, MAX_JSON};
use super::reference::Reference;

pub struct Registry {
    agent: ureq::Agent,
    base: String,
    r: Reference,
    token: Option<String>,
}

impl Registry {
    pub fn new(r: Reference, tls_verify: bool) -> Registry {
        let scheme = if r.is_local() { "http" } else { "https" };
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(!tls_verify)
            .build();
        let mut config = ureq::Agent::config_builder();
        if r.is_local() {
            // Never through a proxy from the environment (Go's, and so Docker's, rule).
            config = config.proxy(None);
        }
        let agent = config
            .http_status_as_error(false)
            .tls_config(tls)
            .accept_encoding("identity")
            .user_agent(concat!("ns-ctl/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Registry {
            agent,
            base: format!("{scheme}://{}/v2/{}", r.api_host(), r.repo),
            r,
            token: None,
        }
    }

    /// GET `url`, with the token once the registry has asked for one; a 401 gets a (new)
    /// token once: tokens expire (Docker Hub's after 5 minutes) during a long pull.
    fn get(&mut self, url: &str, accept: Option<&str>) -> Result<Response<Body>> {
        let mut asked = false;
        loop {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(t) = &self.token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            let resp = req.call().map_err(|e| net_error(url, &e))?;
            if resp.status() != 401 || asked {
                return Ok(resp);
            }
            asked = true;
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            self.token = Some(self.fetch_token(&challenge)?);
        }
    }

    /// An anonymous token from the challenge's realm (its JSON's `token`, or
    /// `access_token`).
    fn fetch_token(&mut self, challenge: &str) -> Result<String> {
        let what = self.what();
        let Some(params) = challenge
            .strip_prefix("Bearer ")
            .or_else(|| challenge.strip_prefix("bearer "))
        else {
            return Err(Error::setup(format!(
                "{what}: the registry wants credentials ({}); only anonymous pulls are supported",
                if challenge.is_empty() {
                    "401 without a challenge"
                } else {
                    challenge
                }
            )));
        };
        let p = auth_params(params);
        let get = |k: &str| {
            p.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let realm = get("realm")
            .ok_or_else(|| Error::setup(format!("{what}: a Bearer challenge without a realm")))?;
        let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.r.repo));
        let mut req = self.agent.get(&realm).query("scope", &scope);
        if let Some(s) = get("service") {
            req = req.query("service", &s);
        }
        let mut resp = req.call().map_err(|e| net_error(&realm, &e))?;
        if resp.status() != 200 {
            return Err(Error::setup(format!(
                "{what}: the token service {realm} answered {}",
                resp.status()
            )));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| net_error(&realm, &e))?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            Error::setup(format!(
                "{what}: the token service {realm} answered no JSON"
            ))
        })?;
        v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .map(String::from)
            .ok_or_else(|| Error::setup(format!("{what}: the token service {realm} gave no token")))
    }

    /// A manifest by tag or digest: its bytes (at most [`MAX_JSON`]) and Content-Type.
    fn get_manifest(&mut self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let url = format!("{}/manifests/{reference}", self.base);
        let mut resp = self.get(&url, Some(ACCEPT))?;
        self.check_status(&mut resp, &format!("manifest {reference}"))?;
        let media = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .map_err(|e| net_error(&url, &e))?;
        Ok((body, media))
    }

    /// An error for anything but 200: the registry's own error message when it sent one.
    fn check_status(&self, resp: &mut Response<Body>, thing: &str) -> Result<()> {
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_vec()
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let e = &v["errors"][0];
        let msg = match (e["code"].as_str(), e["message"].as_str()) {
            (Some(c), Some(m)) => format!("{} ({c})", m.replace('\n', " ")),
            _ if status == 404 => "not found (HTTP 404)".to_string(),
            _ => format!("HTTP {status}"),
        };
        Err(Error::setup(format!("{}: {thing}: {msg}", self.what())))
    }
}

/// `k=v` and `k="v"` pairs, comma-separated, as a challenge carries them.
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some((k, after)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let (v, next) = match after.strip_prefix('"') {
            Some(q) => match q.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (q.to_string(), ""),
            },
            None => match after.split_once(',') {
                Some((v, n)) => (v.trim().to_string(), n),
                None => (after.trim().to_string(), ""),
            },
        };
        out.push((k, v));
        rest = next.trim_start_matches([',', ' ']);
    }
    out
}

fn net_error(url: &str, e: &ureq::Error) -> Error {
    let e = match e {
        ureq::Error::Io(io) => ns_core::error::io_desc(io),
        e => e.to_string(),
    };
    Error::setup(format!("cannot fetch {url}: {e}"))
}

impl Source for Registry {
    fn top(&mut self) -> Result<(Vec<u8>, Option<String>)> {
        let reference = self.r.manifest_ref().to_string();
        let (bytes, media) = self.get_manifest(&reference)?;
        if let Some(d) = self.r.digest.clone() {
            check_bytes(&bytes, &d, None, &format!("{}: manifest", self.what()))?;
        }
        Ok((bytes, media))
    }

    fn manifest(&mut self, d: &Descriptor) -> Result<(Vec<u8>, Option<String>)> {
        self.get_manifest(&d.digest)
    }

    fn blob(&mut self, d: &Descriptor) -> Result<Box<dyn Read + '_>> {
        let url = format!("{}/blobs/{}", self.base, d.digest);
        let mut resp = self.get(&url, None)?;
        self.check_status(&mut resp, &format!("blob {}", d.digest))?;
        let url2 = url.clone();
        let r = resp.into_body().into_reader();
        Ok(Box::new(ErrorsWithUrl(r, url2)))
    }

    fn what(&self) -> String {
        let r = &self.r;
        let mut s = format!("{}/{}", r.registry, r.repo);
        if let Some(t) = &r.tag {
            s += &format!(":{t}");
        }
        if let Some(d) = &r.digest {
            s += &format!("@{d}");
        }
        s
    }
}

/// A body reader whose errors say which URL they come from.
struct ErrorsWithUrl<R>(R, String);

impl<R: Read> Read for ErrorsWithUrl<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("reading {}: {}", self.1, ns_core::error::io_desc(&e)),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn challenge_params() {
        let p = super::auth_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(p[2].1, "repository:library/busybox:pull");
        let p = super::auth_params("realm=http://x/t, service=s");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "http://x/t".into()),
                ("service".into(), "s".into())
            ]
        );
    }
}
