//! A token wrapper: `Debug` prints `REDACTED`, there is no `Display`, and `expose()` marks
//! each place a secret leaves its wrapper, so a token cannot slip into a message or a panic.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the value, in hex: names a token in a file without holding it.
    pub fn sha256_hex(&self) -> String {
        ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A short, stable name for the value: 8 hex digits of its SHA-256 reveal nothing useful.
    pub fn fingerprint(&self) -> String {
        let mut hex = self.sha256_hex();
        hex.truncate(8);
        hex
    }
}

/// `text` with every occurrence of each non-empty secret replaced by `REDACTED`. Text that came
/// from a server (an `error_description`) may echo a token the call sent; it goes through here
/// before it is printed or stored.
pub fn redact(text: &str, secrets: &[&Secret]) -> String {
    secrets
        .iter()
        .filter(|s| !s.0.is_empty())
        .fold(text.to_string(), |t, s| t.replace(&s.0, "REDACTED"))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("tok-123");
        assert_eq!(format!("{s:?}"), "REDACTED");
        assert_eq!(format!("{:?}", Some(&s)), "Some(REDACTED)");
        assert_eq!(s.expose(), "tok-123");
    }

    #[test]
    fn sha256_and_fingerprint() {
        // FIPS 180-2 test vector.
        assert_eq!(
            Secret::new("abc").sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let t = Secret::new("refresh-1");
        assert_eq!(t.fingerprint().len(), 8);
        assert_eq!(t.fingerprint(), Secret::new("refresh-1").fingerprint());
        assert_ne!(t.fingerprint(), Secret::new("refresh-2").fingerprint());
    }

    #[test]
    fn redact_replaces_every_known_secret() {
        let (a, b, empty) = (
            Secret::new("tok-a"),
            Secret::new("tok-b"),
            Secret::default(),
        );
        assert_eq!(
            super::redact("x tok-a y tok-b tok-a", &[&a, &b, &empty]),
            "x REDACTED y REDACTED REDACTED"
        );
    }
}
