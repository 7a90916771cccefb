//! The image's config as a `.nspawn` file, in keys ns-run (and nspawn) honour from an
//! untrusted file beside the image: `Parameters=` (entrypoint then cmd, with `Boot=no`, or
//! `Boot=yes` when that command is an init: nspawn reads `Parameters=` only beside one of
//! them), `Environment=`, `User=`, `WorkingDirectory=`, `KillSignal=` (the image's
//! StopSignal). Exposed ports are written as a comment: `Port=` needs a private network,
//! and nspawn ignores it from an untrusted file anyway.

use ns_core::{Error, Result};
use serde_json::Value;

/// Programs that are an init: the image boots (`-b`) with the rest as its arguments.
const INITS: &[&str] = &[
    "/sbin/init",
    "/usr/sbin/init",
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
];

/// The settings file for an image whose config is `config` (the config blob), fetched
/// from `origin` (manifest `digest`).
pub fn settings(config: &Value, origin: &str, digest: &str) -> Result<String> {
    let c = &config["config"];
    let mut out = format!("# Written by ns-ctl from {origin}\n# manifest {digest}\n[Exec]\n");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut argv = strings(&c["Entrypoint"]);
    argv.extend(strings(&c["Cmd"]));
    if let Some(first) = argv.first() {
        let boot = INITS.contains(&first.as_str());
        out += if boot { "Boot=yes\n" } else { "Boot=no\n" };
        let params = if boot { &argv[1..] } else { &argv[..] };
        if !params.is_empty() {
            out += &format!("Parameters={}\n", quoted(params)?);
        }
    }
    // (An entry without `=` is no variable: Docker drops it too.)
    let env: Vec<String> = strings(&c["Env"])
        .into_iter()
        .filter(|e| e.contains('='))
        .collect();
    if !env.is_empty() {
        out += &format!("Environment={}\n", quoted(&env)?);
    }
    if let Some(u) = c["User"].as_str().filter(|u| !u.is_empty()) {
        let (user, group) = match u.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (u, None),
        };
        out += &format!("User={}\n", one_word(user)?);
        if let Some(g) = group {
            out += &format!(
                "# The image's group {} is not set: User= takes a user (its own group applies)\n",
                one_word(g)?
            );
        }
    }
    if let Some(w) = c["WorkingDir"].as_str().filter(|w| !w.is_empty()) {
        // Always absolute, as Docker makes it.
        out += &format!(
            "WorkingDirectory=/{}\n",
            one_word(w.trim_start_matches('/'))?
        );
    }
    if let Some(s) = c["StopSignal"].as_str().filter(|s| !s.is_empty()) {
        out += &format!("KillSignal={}\n", one_word(s)?);
    }
    if let Some(ports) = c["ExposedPorts"].as_object().filter(|p| !p.is_empty()) {
        let list: Vec<&str> = ports.keys().map(String::as_str).collect();
        out += &format!(
            "# Exposed ports: {}\n# (not published: Port= needs a private network; add [Network] \
             VirtualEthernet=yes and Port= in a trusted file, or -n -p on the command line)\n",
            one_word(&list.join(" "))?
        );
    }
    Ok(out)
}

/// Words as the settings parser splits them back: each in double quotes, a `"` inside one
/// given in single quotes (quoted runs join into one word).
fn quoted(words: &[String]) -> Result<String> {
    let q = words
        .iter()
        .map(|w| {
            one_word(w)?;
            Ok(format!("\"{}\"", w.replace('"', "\"'\"'\"")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(q.join(" "))
}

/// A value on one line: a line break (or NUL) cannot be written in a settings file.
fn one_word(w: &str) -> Result<&str> {
    if w.contains(['\n', '\r', '\0']) {
        return Err(Error::setup(format!(
            "the image's config has a value with a line break, which a .nspawn file cannot hold: {w:?}"
        )));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_becomes_settings() {
        let c = serde_json::json!({"config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo \"hi\" 'x' $FOO"],
            "Env": ["PATH=/bin", "FOO=a b"],
            "User": "1000:100",
            "WorkingDir": "/srv",
            "ExposedPorts": {"80/tcp": {}},
        }});
        let s = settings(&c, "r", "sha256:x").unwrap();
        assert!(
            s.contains(
                "Boot=no\nParameters=\"/bin/sh\" \"-c\" \"echo \"'\"'\"hi\"'\"'\" 'x' $FOO\"\n"
            ),
            "{s}"
        );
        assert!(s.contains("Environment=\"PATH=/bin\" \"FOO=a b\"\n"), "{s}");
        assert!(s.contains("User=1000\n# The image's group 100"), "{s}");
        assert!(s.contains("WorkingDirectory=/srv\n"), "{s}");
        assert!(s.contains("# Exposed ports: 80/tcp\n"), "{s}");
        let c = serde_json::json!({"config": {"Cmd": ["/sbin/init", "--x"]}});
        let s = settings(&c, "r", "d").unwrap();
        assert!(s.contains("Boot=yes\nParameters=\"--x\"\n"), "{s}");
        let c = serde_json::json!({"config": {"Cmd": ["a\nb"]}});
        assert!(settings(&c, "r", "d").is_err());
    }
}
