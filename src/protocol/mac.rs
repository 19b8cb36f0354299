//! HMAC-SHA256 signatures written as hexadecimal: the agents' heartbeats and the operator's
//! answers (`liveness.rs`), and git forges' webhook deliveries (`crate::gitsync`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature of `message` under `key`, in lower-case hexadecimal (64 digits).
pub fn sign_hex(key: &[u8], message: &[u8]) -> String {
    let Some(mut mac) = mac(key) else {
        return String::new();
    };
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `signature_hex` is the signature of `message` under `key`, compared in constant
/// time.
pub fn verify_hex(key: &[u8], message: &[u8], signature_hex: &str) -> bool {
    let (Some(expected), Some(mut mac)) = (decode_hex(signature_hex), mac(key)) else {
        return false;
    };
    mac.update(message);
    mac.verify_slice(&expected).is_ok()
}

/// HMAC-SHA256 keyed with `key`; HMAC takes keys of any length, so this is always `Some`.
fn mac(key: &[u8]) -> Option<Hmac<Sha256>> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_key_and_message() {
        let signature = sign_hex(b"key", b"message");
        assert_eq!(signature.len(), 64);
        assert!(verify_hex(b"key", b"message", &signature));
        assert!(!verify_hex(b"other key", b"message", &signature));
        assert!(!verify_hex(b"key", b"other message", &signature));
        assert!(!verify_hex(b"key", b"message", &signature[1..]));
        assert!(!verify_hex(b"key", b"message", "zz"));
    }
}
