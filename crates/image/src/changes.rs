//! `docker import --change 'INSTRUCTION args'`: the Dockerfile instructions that only touch
//! the image config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::RunConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("invalid change {change:?}: {reason}")]
    Invalid { change: String, reason: String },
    #[error(
        "invalid change {0:?}: only CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME and WORKDIR are supported"
    )]
    Unsupported(String),
}

/// Apply each change (one instruction per line) to `config`, in order.
pub fn apply_changes(config: &mut RunConfig, changes: &[String]) -> Result<(), ChangeError> {
    for change in changes {
        for line in change.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            apply_one(config, line)?;
        }
    }
    Ok(())
}

fn apply_one(config: &mut RunConfig, line: &str) -> Result<(), ChangeError> {
    let invalid = |reason: &str| ChangeError::Invalid { change: line.to_owned(), reason: reason.to_owned() };
    let (instruction, args) = match line.split_once(char::is_whitespace) {
        Some((instruction, args)) => (instruction, args.trim()),
        None => (line, ""),
    };
    let instruction = instruction.to_ascii_uppercase();
    if args.is_empty() {
        return Err(invalid("missing arguments"));
    }
    match instruction.as_str() {
        "CMD" => config.cmd = Some(command_form(args)),
        "ENTRYPOINT" => config.entrypoint = Some(command_form(args)),
        "ENV" => {
            for (key, value) in key_values(args).map_err(|r| invalid(&r))? {
                config.set_env(&key, &value);
            }
        }
        "LABEL" => {
            let labels = config.labels.get_or_insert_with(BTreeMap::new);
            for (key, value) in key_values(args).map_err(|r| invalid(&r))? {
                labels.insert(key, value);
            }
        }
        "EXPOSE" => {
            let ports = config.exposed_ports.get_or_insert_with(BTreeMap::new);
            for word in split_words(args).map_err(|r| invalid(&r))? {
                ports.insert(normalize_port(&word).map_err(|r| invalid(&r))?, Value::Object(serde_json::Map::new()));
            }
        }
        "VOLUME" => {
            let volumes = config.volumes.get_or_insert_with(BTreeMap::new);
            let paths = match json_array(args) {
                Some(paths) => paths,
                None => split_words(args).map_err(|r| invalid(&r))?,
            };
            for path in paths {
                if path.is_empty() {
                    return Err(invalid("empty volume path"));
                }
                volumes.insert(path, Value::Object(serde_json::Map::new()));
            }
        }
        "WORKDIR" => {
            let dir = single_word(args).map_err(|r| invalid(&r))?;
            let joined = if dir.starts_with('/') {
                dir
            } else {
                format!("{}/{dir}", config.working_dir().trim_end_matches('/'))
            };
            config.working_dir = Some(joined);
        }
        "USER" => config.user = Some(single_word(args).map_err(|r| invalid(&r))?),
        "STOPSIGNAL" => config.stop_signal = Some(single_word(args).map_err(|r| invalid(&r))?),
        _ => return Err(ChangeError::Unsupported(line.to_owned())),
    }
    Ok(())
}

/// `["a", "b"]` (exec form) or anything else, run by `/bin/sh -c` (shell form).
fn command_form(args: &str) -> Vec<String> {
    json_array(args).unwrap_or_else(|| vec!["/bin/sh".to_owned(), "-c".to_owned(), args.to_owned()])
}

fn json_array(args: &str) -> Option<Vec<String>> {
    if !args.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(args).ok()
}

fn single_word(args: &str) -> Result<String, String> {
    let mut words = split_words(args)?;
    match (words.pop(), words.is_empty()) {
        (Some(word), true) => Ok(word),
        _ => Err("expected exactly one argument".to_owned()),
    }
}

/// `K=V K2="v 2"`, or the legacy `K value with spaces` when the first word has no `=`.
fn key_values(args: &str) -> Result<Vec<(String, String)>, String> {
    let first = args.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (key, value) =
            args.split_once(char::is_whitespace).ok_or_else(|| "expected KEY=VALUE or KEY VALUE".to_owned())?;
        let value = split_words(value.trim())?.join(" ");
        return Ok(vec![(key.to_owned(), value)]);
    }
    split_words(args)?
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err(format!("empty key in {word:?}")),
            Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
            None => Err(format!("{word:?} is not KEY=VALUE")),
        })
        .collect()
}

/// Shell-like word splitting: whitespace separates, quotes group, backslash escapes.
fn split_words(args: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => word.push(c),
            (_, '\\') => {
                let escaped = chars.next().ok_or("trailing backslash")?;
                word.push(escaped);
                in_word = true;
            }
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".to_owned());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `80` → `80/tcp`; `53/udp` stays; ranges are not expanded.
fn normalize_port(word: &str) -> Result<String, String> {
    let (port, proto) = word.split_once('/').unwrap_or((word, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid protocol in {word:?}"));
    }
    let valid = |p: &str| p.parse::<u16>().is_ok_and(|n| n > 0);
    let port_ok = match port.split_once('-') {
        Some((low, high)) => valid(low) && valid(high),
        None => valid(port),
    };
    if !port_ok {
        return Err(format!("invalid port {word:?}"));
    }
    Ok(format!("{port}/{proto}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(changes: &[&str]) -> Result<RunConfig, ChangeError> {
        let mut config = RunConfig::default();
        let changes: Vec<String> = changes.iter().map(|s| (*s).to_owned()).collect();
        apply_changes(&mut config, &changes)?;
        Ok(config)
    }

    #[test]
    fn all_instructions() {
        let config = applied(&[
            r#"CMD ["/bin/sh", "-c", "echo hi"]"#,
            "ENTRYPOINT /entry.sh --flag",
            r#"ENV A=1 B="two words" C=x\ y"#,
            "ENV LEGACY some value",
            "LABEL org.example=yes",
            "EXPOSE 80 53/udp",
            "VOLUME /data",
            "WORKDIR /srv",
            "WORKDIR app",
            "USER 1000:1000",
            "STOPSIGNAL SIGTERM",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cmd(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(config.entrypoint(), ["/bin/sh", "-c", "/entry.sh --flag"]);
        assert_eq!(config.env(), ["A=1", "B=two words", "C=x y", "LEGACY=some value"]);
        assert_eq!(config.exposed_ports(), ["53/udp", "80/tcp"]);
        assert_eq!(config.working_dir(), "/srv/app");
        assert_eq!(config.user(), "1000:1000");
        assert_eq!(config.stop_signal.as_deref(), Some("SIGTERM"));
        assert!(config.volumes.is_some_and(|v| v.contains_key("/data")));
        assert!(config.labels.is_some_and(|l| l["org.example"] == "yes"));
    }

    #[test]
    fn refuses_bad_changes() {
        for bad in ["RUN rm -rf /", "CMD", "EXPOSE 99999", "EXPOSE 80/xyz", "ENV =x", "ENV A=\"open", "USER a b"] {
            assert!(applied(&[bad]).is_err(), "{bad:?} should be refused");
        }
    }
}
