//! The Kubernetes objects the server serves, as JSON (`serde_json::Value`): kubectl reads a small,
//! well-known subset of fields, and keeping the object as sent preserves everything else a client
//! put in it.

pub mod discovery;
pub mod node;
pub mod pod;
pub mod selector;
pub mod table;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The Kubernetes version the server reports: the kubectl dispatcher picks `kubectl.1.<minor>`.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";
pub const KUBE_GIT_VERSION: &str = "v1.33.0-hatch";

/// Now, as Kubernetes writes timestamps (RFC 3339, whole seconds, UTC).
pub fn now_rfc3339() -> String {
    format_time(OffsetDateTime::now_utc())
}

pub fn format_time(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0).unwrap_or(t).format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// RFC 3339 with microseconds (audit records).
pub fn format_time_precise(t: OffsetDateTime) -> String {
    let micros = t.nanosecond() / 1000 * 1000;
    t.replace_nanosecond(micros).unwrap_or(t).format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// A random UUID (version 4), as Kubernetes uids are.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A stable UUID-shaped id derived from `seed` (for objects hatch synthesizes, like mirror pods).
pub fn derived_uid(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(seed.as_bytes());
    let h = hex::encode(&d[..16]);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// `obj.a.b.c` as a string, or "".
pub fn str_at<'a>(obj: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = obj;
    for p in path {
        match cur.get(p) {
            Some(v) => cur = v,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

pub fn name(obj: &Value) -> &str {
    str_at(obj, &["metadata", "name"])
}

pub fn namespace(obj: &Value) -> &str {
    str_at(obj, &["metadata", "namespace"])
}

pub fn uid(obj: &Value) -> &str {
    str_at(obj, &["metadata", "uid"])
}

/// Sets `metadata.resourceVersion` (the store's modification revision; never stored in the value).
pub fn set_resource_version(obj: &mut Value, revision: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
}

/// A `List` object (`PodList`, `NodeList`, …).
pub fn list_object(kind: &str, items: Vec<Value>, revision: u64) -> Value {
    serde_json::json!({
        "kind": kind,
        "apiVersion": "v1",
        "metadata": { "resourceVersion": revision.to_string() },
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn times_and_ids() {
        let t = parse_time("2024-05-06T07:08:09Z").unwrap();
        assert_eq!(format_time(t), "2024-05-06T07:08:09Z");
        assert!(now_rfc3339().ends_with('Z'));
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(derived_uid("x"), derived_uid("x"));
        assert_ne!(derived_uid("x"), derived_uid("y"));
    }
}
