//! The exec request's query string: kubectl's `PodExecOptions` plus hatch's
//! extensions for `docker exec`-like features.
//!
//! ```
//! use hatch_wire::exec_options::ExecOptions;
//!
//! // As kubectl sends it (keys sorted, booleans only when true):
//! let q = "command=ls&command=-l&command=%2F&container=main&stderr=true&stdout=true";
//! let opts = ExecOptions::from_query(q).unwrap();
//! assert_eq!(opts.command, ["ls", "-l", "/"]);
//! assert_eq!(opts.container.as_deref(), Some("main"));
//! assert!(opts.stdout && opts.stderr && !opts.stdin && !opts.tty);
//! assert_eq!(opts.to_query(), q);
//! ```
//!
//! Parsing rules (mirroring the API server where it has one):
//! * `command`, `env`: repeated, order kept. Other parameters: the first
//!   occurrence wins, like Go's `url.Values.Get`. Unknown parameters are
//!   ignored, so newer clients keep working.
//! * Booleans (`stdin`, `stdout`, `stderr`, `tty`, `privileged`, `detach`)
//!   follow Go `strconv.ParseBool`: `1 t T TRUE true True` / `0 f F FALSE
//!   false False`; anything else (including an empty value) is an error
//!   naming the parameter. Absent means false.
//! * Values are percent-decoded with `+` as space, like Go's `QueryUnescape`;
//!   a malformed escape, invalid UTF-8 or a NUL byte (which `execve` cannot
//!   carry) is an error.
//! * **`tty=true` forces `stderr` off**, as the kubelet does: a terminal
//!   merges stderr into stdout, and kubectl never opens a stderr stream with
//!   a TTY. Session code can trust `stderr` as parsed.
//! * At least one `command` is required, and at least one of
//!   `stdin`/`stdout`/`stderr` unless `detach` is set. The stream check is
//!   made *after* the TTY rule, so `stderr=true&tty=true` alone, which
//!   would attach nothing, is rejected (the API server would let it through
//!   to a session with no output; no real client sends it).
//! * Empty `container`, `user` and `workdir` values mean "not set".

use std::fmt::Write as _;

/// The query parameters hatch adds to Kubernetes' exec. A Kubernetes API server ignores query
/// parameters it does not know, so a client must learn that the server honours these (hatch's
/// `/version` lists them under `hatchExecExtensions`) before sending any: otherwise `-u alice`
/// would silently run as the image's user.
pub const HATCH_EXTENSIONS: [&str; 5] = ["user", "privileged", "env", "workdir", "detach"];

/// A parsed exec request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// argv; never empty once validated.
    pub command: Vec<String>,
    /// Target container; `None` means the pod's default container.
    pub container: Option<String>,
    /// Attach stdin.
    pub stdin: bool,
    /// Attach stdout.
    pub stdout: bool,
    /// Attach stderr (always false when `tty`).
    pub stderr: bool,
    /// Allocate a pseudo-terminal.
    pub tty: bool,
    /// hatch: `USER[:GROUP]`, names or numeric ids, like `docker exec -u`.
    pub user: Option<String>,
    /// hatch: run with the full capability set, like `docker exec --privileged`.
    pub privileged: bool,
    /// hatch: extra `KEY=VALUE` environment entries (repeated `env=`).
    pub env: Vec<String>,
    /// hatch: working directory, like `docker exec -w`.
    pub workdir: Option<String>,
    /// hatch: start the process and return without attaching any stream.
    pub detach: bool,
}

/// Why an exec query was rejected. The messages are suitable for a 400
/// `BadRequest` Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecOptionsError {
    /// A boolean parameter with a value `strconv.ParseBool` rejects.
    #[error("invalid value {value:?} for parameter {param}: expected true or false")]
    InvalidBool {
        /// Parameter name.
        param: &'static str,
        /// The offending (decoded) value.
        value: String,
    },
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding in query parameter {0:?}")]
    BadEscape(String),
    /// A key or value that is not UTF-8 once decoded.
    #[error("query parameter {0:?} is not valid utf-8")]
    NotUtf8(String),
    /// A value containing a NUL byte.
    #[error("parameter {0} contains a nul byte")]
    NulByte(&'static str),
    /// An `env` entry without `=` or with an empty name.
    #[error("invalid env entry {0:?}: expected KEY=VALUE")]
    InvalidEnv(String),
    /// No `command` parameter.
    #[error("you must specify at least one command")]
    NoCommand,
    /// None of stdin, stdout, stderr requested (and not detached).
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
}

impl ExecOptions {
    /// Parses and validates a raw query string (without or with a leading
    /// `?`). See the module docs for the rules.
    pub fn from_query(query: &str) -> Result<ExecOptions, ExecOptionsError> {
        let query = query.strip_prefix('?').unwrap_or(query);
        let mut opts = ExecOptions::default();
        let mut seen_single: Vec<&'static str> = Vec::new();
        for pair in query.split('&') {
            if pair.is_empty() {
                continue;
            }
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = unescape(raw_key)?;
            let Some(param) = Param::from_name(&key) else {
                continue;
            };
            let value = unescape(raw_value)?;
            if value.contains('\0') {
                return Err(ExecOptionsError::NulByte(param.name()));
            }
            match param {
                Param::Command => opts.command.push(value),
                Param::Env => {
                    if !matches!(value.split_once('='), Some((k, _)) if !k.is_empty()) {
                        return Err(ExecOptionsError::InvalidEnv(value));
                    }
                    opts.env.push(value);
                }
                single => {
                    // First occurrence wins (Go `Values.Get`).
                    if seen_single.contains(&single.name()) {
                        continue;
                    }
                    seen_single.push(single.name());
                    opts.set_single(single, value)?;
                }
            }
        }
        opts.validate()?;
        if opts.tty {
            opts.stderr = false;
        }
        Ok(opts)
    }

    fn set_single(&mut self, param: Param, value: String) -> Result<(), ExecOptionsError> {
        let non_empty = |v: String| (!v.is_empty()).then_some(v);
        let flag = |v: &str| {
            parse_go_bool(v).ok_or_else(|| ExecOptionsError::InvalidBool { param: param.name(), value: v.to_owned() })
        };
        match param {
            Param::Container => self.container = non_empty(value),
            Param::User => self.user = non_empty(value),
            Param::Workdir => self.workdir = non_empty(value),
            Param::Stdin => self.stdin = flag(&value)?,
            Param::Stdout => self.stdout = flag(&value)?,
            Param::Stderr => self.stderr = flag(&value)?,
            Param::Tty => self.tty = flag(&value)?,
            Param::Privileged => self.privileged = flag(&value)?,
            Param::Detach => self.detach = flag(&value)?,
            Param::Command | Param::Env => {}
        }
        Ok(())
    }

    /// Checks the request-level rules (a command; at least one stream unless
    /// detached; no NUL bytes; well-formed env entries). `from_query` calls
    /// it; call it yourself on options built in code.
    pub fn validate(&self) -> Result<(), ExecOptionsError> {
        if self.command.is_empty() {
            return Err(ExecOptionsError::NoCommand);
        }
        // A TTY drops stderr, so it cannot be the only stream.
        let stderr = self.stderr && !self.tty;
        if !(self.stdin || self.stdout || stderr || self.detach) {
            return Err(ExecOptionsError::NoStreams);
        }
        let has_nul = |s: &str| s.contains('\0');
        if self.command.iter().any(|c| has_nul(c)) {
            return Err(ExecOptionsError::NulByte("command"));
        }
        for (name, v) in [("container", &self.container), ("user", &self.user), ("workdir", &self.workdir)] {
            if v.as_deref().is_some_and(has_nul) {
                return Err(ExecOptionsError::NulByte(name));
            }
        }
        for e in &self.env {
            if has_nul(e) {
                return Err(ExecOptionsError::NulByte("env"));
            }
            if !matches!(e.split_once('='), Some((k, _)) if !k.is_empty()) {
                return Err(ExecOptionsError::InvalidEnv(e.clone()));
            }
        }
        Ok(())
    }

    /// The hatch extensions (names from [`HATCH_EXTENSIONS`]) these options use.
    pub fn extensions_used(&self) -> Vec<&'static str> {
        let [user, privileged, env, workdir, detach] = HATCH_EXTENSIONS;
        [
            (user, self.user.is_some()),
            (privileged, self.privileged),
            (env, !self.env.is_empty()),
            (workdir, self.workdir.is_some()),
            (detach, self.detach),
        ]
        .into_iter()
        .filter_map(|(name, used)| used.then_some(name))
        .collect()
    }

    /// Encodes the options the way kubectl does (Go `url.Values.Encode`):
    /// keys sorted, `command` and `env` repeated in order, booleans written
    /// as `=true` only when true, unset strings omitted, Go `QueryEscape`
    /// escaping. Does not validate.
    pub fn to_query(&self) -> String {
        let mut out = String::new();
        let mut put = |key: &str, value: &str| {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(key);
            out.push('=');
            query_escape_into(value, &mut out);
        };
        // Alphabetical order, as url.Values.Encode sorts keys.
        for c in &self.command {
            put("command", c);
        }
        if let Some(c) = &self.container {
            put("container", c);
        }
        if self.detach {
            put("detach", "true");
        }
        for e in &self.env {
            put("env", e);
        }
        for (key, on) in [
            ("privileged", self.privileged),
            ("stderr", self.stderr),
            ("stdin", self.stdin),
            ("stdout", self.stdout),
            ("tty", self.tty),
        ] {
            if on {
                put(key, "true");
            }
        }
        if let Some(u) = &self.user {
            put("user", u);
        }
        if let Some(w) = &self.workdir {
            put("workdir", w);
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Command,
    Container,
    Stdin,
    Stdout,
    Stderr,
    Tty,
    User,
    Privileged,
    Env,
    Workdir,
    Detach,
}

impl Param {
    const ALL: [Param; 11] = [
        Param::Command,
        Param::Container,
        Param::Stdin,
        Param::Stdout,
        Param::Stderr,
        Param::Tty,
        Param::User,
        Param::Privileged,
        Param::Env,
        Param::Workdir,
        Param::Detach,
    ];

    const fn name(self) -> &'static str {
        match self {
            Param::Command => "command",
            Param::Container => "container",
            Param::Stdin => "stdin",
            Param::Stdout => "stdout",
            Param::Stderr => "stderr",
            Param::Tty => "tty",
            Param::User => "user",
            Param::Privileged => "privileged",
            Param::Env => "env",
            Param::Workdir => "workdir",
            Param::Detach => "detach",
        }
    }

    fn from_name(name: &str) -> Option<Param> {
        Param::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Go `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go `url.QueryUnescape`: `+` is a space, `%XX` a byte; strict about
/// malformed escapes, and the result must be UTF-8.
fn unescape(raw: &str) -> Result<String, ExecOptionsError> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(hi), Some(lo)) => {
                        // Both digits are < 16, so this fits in a byte.
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                    }
                    _ => return Err(ExecOptionsError::BadEscape(raw.to_owned())),
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ExecOptionsError::NotUtf8(raw.to_owned()))
}

/// Go `url.QueryEscape`: unreserved bytes (`A-Z a-z 0-9 - _ . ~`) stay,
/// space becomes `+`, everything else `%XX` with upper-case hex.
fn query_escape_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type R = Result<(), ExecOptionsError>;

    #[test]
    fn extensions_used_names_exactly_the_hatch_parameters_set() -> R {
        let plain = ExecOptions::from_query("command=sh&stdin=true&stdout=true&tty=true&container=c")?;
        assert!(plain.extensions_used().is_empty());
        let all = ExecOptions::from_query(
            "command=sh&stdout=true&user=alice&privileged=true&env=A%3D1&workdir=%2Ftmp&detach=true",
        )?;
        assert_eq!(all.extensions_used(), HATCH_EXTENSIONS);
        let some = ExecOptions::from_query("command=sh&stdout=true&env=A%3D1")?;
        assert_eq!(some.extensions_used(), ["env"]);
        // Every extension is a parameter the parser knows.
        assert!(HATCH_EXTENSIONS.iter().all(|name| Param::from_name(name).is_some()));
        Ok(())
    }

    #[test]
    fn kubectl_queries() -> R {
        let o = ExecOptions::from_query("command=cat&container=side&stderr=true&stdin=true&stdout=true")?;
        assert_eq!(o.command, ["cat"]);
        assert_eq!(o.container.as_deref(), Some("side"));
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);

        // -it: kubectl sends stdin, stdout, tty (no stderr).
        let o = ExecOptions::from_query("command=sh&container=main&stdin=true&stdout=true&tty=true")?;
        assert!(o.stdin && o.stdout && o.tty && !o.stderr);

        // kubectl cp: sh -c with spaces and pipes.
        let o = ExecOptions::from_query(
            "command=sh&command=-c&command=tar+cf+-+%2Ftmp%2Fx+%7C+tail+-c%2B3&container=c&stderr=true&stdout=true",
        )?;
        assert_eq!(o.command, ["sh", "-c", "tar cf - /tmp/x | tail -c+3"]);
        Ok(())
    }

    #[test]
    fn go_parse_bool() -> R {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(ExecOptions::from_query(&format!("command=x&stdout={t}"))?.stdout);
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            let q = format!("command=x&stdout=true&stdin={f}");
            assert!(!ExecOptions::from_query(&q)?.stdin);
        }
        for bad in ["", "yes", "tRUE", "2", "%20true"] {
            let q = format!("command=x&stdout=true&tty={bad}");
            assert!(matches!(ExecOptions::from_query(&q), Err(ExecOptionsError::InvalidBool { param: "tty", .. })));
        }
        // No '=' at all is an empty value, hence invalid.
        assert!(matches!(
            ExecOptions::from_query("command=x&stdin"),
            Err(ExecOptionsError::InvalidBool { param: "stdin", .. })
        ));
        Ok(())
    }

    #[test]
    fn tty_forces_stderr_off() -> R {
        let o = ExecOptions::from_query("command=x&stderr=1&stdout=1&tty=1")?;
        assert!(o.tty && o.stdout && !o.stderr);
        // Found by fuzzing: stderr alone with a TTY attaches nothing, and
        // would not survive a parse/encode round trip.
        assert_eq!(ExecOptions::from_query("command=x&stderr=1&tty=1"), Err(ExecOptionsError::NoStreams));
        Ok(())
    }

    #[test]
    fn required_fields() {
        assert_eq!(ExecOptions::from_query("stdout=true"), Err(ExecOptionsError::NoCommand));
        assert_eq!(ExecOptions::from_query("command=ls&tty=true"), Err(ExecOptionsError::NoStreams));
        assert_eq!(ExecOptions::from_query(""), Err(ExecOptionsError::NoCommand));
        assert_eq!(ExecOptions::from_query("command=ls&stdin=false&stdout=0"), Err(ExecOptionsError::NoStreams));
        let err = ExecOptionsError::NoStreams.to_string();
        assert_eq!(err, "you must specify at least 1 of stdin, stdout, stderr");
    }

    #[test]
    fn hatch_extensions() -> R {
        let o = ExecOptions::from_query(
            "?command=env&detach=true&env=A%3D1&env=B%3Dx%3Dy&privileged=t&user=1000%3A1000&workdir=%2Ftmp",
        )?;
        assert!(o.detach && o.privileged);
        assert!(!o.stdin && !o.stdout && !o.stderr);
        assert_eq!(o.env, ["A=1", "B=x=y"]);
        assert_eq!(o.user.as_deref(), Some("1000:1000"));
        assert_eq!(o.workdir.as_deref(), Some("/tmp"));
        for bad in ["env=A", "env=%3D1", "env="] {
            assert!(matches!(
                ExecOptions::from_query(&format!("command=x&stdout=1&{bad}")),
                Err(ExecOptionsError::InvalidEnv(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn first_wins_unknown_ignored_empty_is_none() -> R {
        let o = ExecOptions::from_query(
            "command=x&container=a&container=b&stdout=true&stdout=bogus&foo=%zz&&user=&workdir=",
        )?;
        assert_eq!(o.container.as_deref(), Some("a"));
        assert!(o.stdout);
        assert_eq!((o.user, o.workdir), (None, None));
        Ok(())
    }

    #[test]
    fn bad_input() {
        assert!(matches!(ExecOptions::from_query("command=%zz&stdout=1"), Err(ExecOptionsError::BadEscape(_))));
        assert!(matches!(ExecOptions::from_query("command=%4&stdout=1"), Err(ExecOptionsError::BadEscape(_))));
        assert!(matches!(ExecOptions::from_query("command=%FF&stdout=1"), Err(ExecOptionsError::NotUtf8(_))));
        assert_eq!(ExecOptions::from_query("command=a%00b&stdout=1"), Err(ExecOptionsError::NulByte("command")));
        assert_eq!(
            ExecOptions::from_query("command=a&stdout=1&container=%00"),
            Err(ExecOptionsError::NulByte("container"))
        );
    }

    #[test]
    fn encode_like_kubectl() {
        let o = ExecOptions {
            command: vec!["ls".into(), "-l".into(), "/".into()],
            container: Some("main".into()),
            stdout: true,
            stderr: true,
            ..ExecOptions::default()
        };
        // Exactly the query kubectl 1.27 sent (protocols.md §2.1).
        assert_eq!(o.to_query(), "command=ls&command=-l&command=%2F&container=main&stderr=true&stdout=true");
        let o = ExecOptions {
            command: vec!["a b*~".into(), "ü".into()],
            env: vec!["K=V".into()],
            detach: true,
            privileged: true,
            tty: true,
            stdin: true,
            user: Some("0:0".into()),
            workdir: Some("/w".into()),
            ..ExecOptions::default()
        };
        assert_eq!(
            o.to_query(),
            "command=a+b%2A~&command=%C3%BC&detach=true&env=K%3DV&privileged=true&stdin=true&tty=true&user=0%3A0&workdir=%2Fw"
        );
    }

    fn valid_options() -> impl Strategy<Value = ExecOptions> {
        let text = "[^\u{0}]{0,12}";
        let opt_text = prop::option::of("[^\u{0}]{1,12}");
        (
            prop::collection::vec(text, 1..4),
            opt_text.clone(),
            any::<[bool; 6]>(),
            opt_text.clone(),
            prop::collection::vec("[A-Za-z_][A-Za-z0-9_]{0,6}=[^\u{0}]{0,8}", 0..3),
            opt_text,
        )
            .prop_map(|(command, container, f, user, env, workdir)| ExecOptions {
                command,
                container,
                stdin: f[0],
                stdout: f[1] || !(f[0] || (f[2] && !f[3]) || f[5]),
                // Parsing drops stderr under a tty; generate the canonical form.
                stderr: f[2] && !f[3],
                tty: f[3],
                privileged: f[4],
                detach: f[5],
                user,
                env,
                workdir,
            })
    }

    proptest! {
        #[test]
        fn round_trip(o in valid_options()) {
            prop_assert_eq!(ExecOptions::from_query(&o.to_query()), Ok(o));
        }

        #[test]
        fn garbage_never_panics(q in ".{0,200}") {
            let _ = ExecOptions::from_query(&q);
        }

        #[test]
        fn escape_round_trips(s in ".{0,40}") {
            let mut e = String::new();
            query_escape_into(&s, &mut e);
            prop_assert_eq!(unescape(&e), Ok(s));
        }
    }
}
