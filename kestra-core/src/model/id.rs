//! Identifiers: Kestra-style 22-character base62 ids.
//!
//! Ids are UUID v7 values (time-ordered, 48 bits of milliseconds then random bits) written in base62
//! with the alphabet `0-9A-Za-z`, left-padded to 22 characters, so that ids sort by creation time both
//! numerically and as strings. Parsing accepts any non-empty string: ids that come from Kestra itself
//! are 22-character base62 too, and other systems may use anything.

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of every generated id.
pub const ID_LENGTH: usize = 22;

/// A new random, time-ordered 22-character base62 id.
pub fn new_id() -> String {
    encode_base62(uuid::Uuid::now_v7().as_u128())
}

/// Encode a 128-bit value as 22 base62 characters (left-padded with `0`).
pub fn encode_base62(mut value: u128) -> String {
    let mut out = [b'0'; ID_LENGTH];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

/// True if `s` looks like an id this crate generates (22 base62 characters).
pub fn is_base62_id(s: &str) -> bool {
    s.len() == ID_LENGTH && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_22_base62_chars_and_unique() {
        let a = new_id();
        let b = new_id();
        assert!(is_base62_id(&a), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn encoding_is_padded_and_order_preserving() {
        assert_eq!(encode_base62(0), "0000000000000000000000");
        assert_eq!(encode_base62(61), "000000000000000000000z");
        assert_eq!(encode_base62(u128::MAX).len(), 22);
        let mut values = [5u128, 1 << 80, 62, 1 << 127, 3_000_000_000];
        let mut encoded: Vec<String> = values.iter().map(|v| encode_base62(*v)).collect();
        values.sort();
        encoded.sort();
        let expected: Vec<String> = values.iter().map(|v| encode_base62(*v)).collect();
        assert_eq!(encoded, expected);
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let first = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id();
        assert!(first < second, "{first} !< {second}");
    }
}
