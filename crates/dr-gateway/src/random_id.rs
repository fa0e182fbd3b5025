//! Random (version 4) UUIDs drawn from the thread's CSPRNG.
//!
//! Why not `uuid::Uuid::new_v4`: it asks the kernel for every id (one `getrandom`
//! system call each). Request ids and `upstream-id`s are made on every RPC and every DR
//! call, so they come from `rand`'s thread-local generator instead: seeded from the
//! operating system and reseeded by it, with no system call per id.

/// A new random UUID.
pub fn uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// A new random UUID as lowercase hyphenated text.
pub fn uuid_text() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid().hyphenated().encode_lower(&mut buf).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_4_and_differ() {
        let (a, b) = (uuid(), uuid());
        assert_ne!(a, b);
        assert_eq!(a.get_version(), Some(uuid::Version::Random));
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn text_is_the_hyphenated_lowercase_form() {
        let text = uuid_text();
        let parsed = uuid::Uuid::parse_str(&text).expect("a UUID");
        assert_eq!(text, parsed.hyphenated().to_string());
        assert_eq!(text.len(), 36);
    }
}
