//! Image names as Docker spells them: `[domain[:port]/]path[:tag]`, normalised to the familiar
//! form (`docker.io/library/busybox:latest` is stored as `busybox:latest`).

use std::fmt;

/// Tag used when a reference names none.
pub const DEFAULT_TAG: &str = "latest";

const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format {reference:?}: {reason}")]
    Invalid { reference: String, reason: String },
}

fn invalid(reference: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid { reference: reference.to_owned(), reason: reason.into() }
}

/// A repository name with a tag, in familiar form. Displays as `name:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    name: String,
    tag: String,
}

impl Reference {
    /// Parse `name[:tag]`, defaulting the tag to `latest`.
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        Self::parse_tagged(reference).map(|(parsed, _)| parsed)
    }

    /// Parse `name[:tag]`; the flag tells whether the tag was written out.
    pub fn parse_tagged(reference: &str) -> Result<(Self, bool), ReferenceError> {
        if reference.is_empty() {
            return Err(invalid(reference, "empty reference"));
        }
        if reference.contains('@') {
            return Err(invalid(reference, "digest references are not supported (there is no registry)"));
        }
        let (name, tag) = split_tag(reference);
        if let Some(tag) = tag {
            validate_tag(reference, tag)?;
        }
        let name = normalize_name(reference, name)?;
        let explicit = tag.is_some();
        let tag = tag.unwrap_or(DEFAULT_TAG).to_owned();
        Ok((Self { name, tag }, explicit))
    }

    /// Build from an already valid name and a tag (validated).
    pub fn with_tag(name: &str, tag: &str) -> Result<Self, ReferenceError> {
        let joined = format!("{name}:{tag}");
        validate_tag(&joined, tag)?;
        let name = normalize_name(&joined, name)?;
        Ok(Self { name, tag: tag.to_owned() })
    }

    /// Familiar repository name (`busybox`, `example.com:5000/team/app`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Fully qualified name, as containerd spells it in OCI annotations
    /// (`docker.io/library/busybox:latest`).
    pub fn qualified(&self) -> String {
        let first = self.name.split('/').next().unwrap_or_default();
        if self.name.contains('/') && is_domain(first) {
            format!("{}:{}", self.name, self.tag)
        } else if self.name.contains('/') {
            format!("docker.io/{}:{}", self.name, self.tag)
        } else {
            format!("docker.io/library/{}:{}", self.name, self.tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// The tag is after the last `:` unless a `/` follows it (then the colon was a port).
fn split_tag(reference: &str) -> (&str, Option<&str>) {
    match reference.rfind(':') {
        Some(colon) if !reference[colon..].contains('/') => (&reference[..colon], Some(&reference[colon + 1..])),
        _ => (reference, None),
    }
}

fn validate_tag(reference: &str, tag: &str) -> Result<(), ReferenceError> {
    let mut bytes = tag.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok
        || tag.len() > MAX_TAG_LEN
        || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(invalid(
            reference,
            format!("tag {tag:?} must be 1-{MAX_TAG_LEN} characters of [A-Za-z0-9_.-], not starting with '.' or '-'"),
        ));
    }
    Ok(())
}

/// A first path component is a registry host when it has a `.` or `:` or is `localhost`.
fn is_domain(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn validate_domain(reference: &str, domain: &str) -> Result<(), ReferenceError> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok { Ok(()) } else { Err(invalid(reference, format!("invalid registry host {domain:?}"))) }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn normalize_name(reference: &str, name: &str) -> Result<String, ReferenceError> {
    if name.is_empty() {
        return Err(invalid(reference, "empty repository name"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(reference, format!("repository name is longer than {MAX_NAME_LEN} characters")));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let domain = if components.len() > 1 && is_domain(components[0]) {
        let domain = components.remove(0);
        validate_domain(reference, domain)?;
        Some(domain)
    } else {
        None
    };
    for component in &components {
        if !valid_path_component(component) {
            let reason = if component.bytes().any(|b| b.is_ascii_uppercase()) {
                format!("repository name ({name}) must be lowercase")
            } else {
                format!("invalid repository name component {component:?}")
            };
            return Err(invalid(reference, reason));
        }
    }
    let path = match domain {
        Some("docker.io" | "index.docker.io") => {
            if components.len() == 2 && components[0] == "library" {
                components[1].to_owned()
            } else {
                components.join("/")
            }
        }
        Some(domain) => format!("{domain}/{}", components.join("/")),
        None => components.join("/"),
    };
    if crate::is_full_hex(&path) {
        return Err(invalid(reference, "cannot specify 64-byte hexadecimal strings as a repository name"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> String {
        match Reference::parse(s) {
            Ok(r) => r.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn familiar_names() {
        assert_eq!(parsed("bb"), "bb:latest");
        assert_eq!(parsed("bb:1.0"), "bb:1.0");
        assert_eq!(parsed("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(parsed("docker.io/team/app"), "team/app:latest");
        assert_eq!(parsed("localhost:5000/bb"), "localhost:5000/bb:latest");
        assert_eq!(parsed("localhost:5000/bb:v2"), "localhost:5000/bb:v2");
        assert_eq!(parsed("org/a.b-c__d/e"), "org/a.b-c__d/e:latest");
        assert!(parsed("a_b.c/e").starts_with("error: "), "a host cannot have '_'");
        assert_eq!(parsed("my-app_x.y"), "my-app_x.y:latest");
    }

    #[test]
    fn invalid_names() {
        for bad in [
            "",
            "BB",
            "bb:",
            "bb:-x",
            "bb::x",
            "-bb",
            "bb-",
            "a//b",
            "bb@sha256:00",
            "a..b",
            &"a".repeat(300),
            &"0".repeat(64),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let err = parsed("Busybox");
        assert!(err.contains("must be lowercase"), "{err}");
    }

    #[test]
    fn explicit_tag_flag() {
        let (r, explicit) = Reference::parse_tagged("bb").unwrap_or_else(|e| panic!("{e}"));
        assert!(!explicit);
        assert_eq!(r.tag(), "latest");
        let (_, explicit) = Reference::parse_tagged("bb:x").unwrap_or_else(|e| panic!("{e}"));
        assert!(explicit);
    }

    #[test]
    fn qualified_names() {
        let q = |s: &str| Reference::parse(s).map(|r| r.qualified()).unwrap_or_default();
        assert_eq!(q("bb"), "docker.io/library/bb:latest");
        assert_eq!(q("team/app:1"), "docker.io/team/app:1");
        assert_eq!(q("example.com/app:1"), "example.com/app:1");
    }
}
