//! Container ids and generated names.

use rand::Rng;
use rand::seq::IndexedRandom;

/// A 64-hex-digit id, as Docker uses.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nimble",
    "proud", "quiet", "rapid", "sharp", "swift", "tender", "vivid", "witty", "zealous", "bold", "crisp", "daring",
];

const NAMES: &[&str] = &[
    "babbage", "curie", "dijkstra", "euler", "fermat", "gauss", "hopper", "hypatia", "kepler", "knuth", "lamport",
    "lovelace", "meitner", "noether", "pascal", "ritchie", "shannon", "thompson", "torvalds", "turing", "wozniak",
];

/// A readable name such as `swift_turing`, like Docker's generated names.
pub fn generated_name() -> String {
    let mut rng = rand::rng();
    let adjective = ADJECTIVES.choose(&mut rng).copied().unwrap_or("hatch");
    let name = NAMES.choose(&mut rng).copied().unwrap_or("container");
    format!("{adjective}_{name}")
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert_eq!(new_id().len(), 64);
        assert!(valid_name(&generated_name()));
        assert!(valid_name("c1"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("x"));
    }
}
