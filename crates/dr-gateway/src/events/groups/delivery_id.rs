//! Delivery ids: what a member acknowledges with. Opaque to callers; inside, the
//! group's incarnation, the event's log sequence and the lease number, so an id
//! names exactly one delivery of one event in one incarnation of one group.
//!
//! Wire format: URL-safe base64 without padding of
//! `[version=1][incarnation: u64 BE][seq: u64 BE][lease: u64 BE]`, 34 characters.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use crate::events::log::Sequence;

const VERSION: u8 = 1;
const LEN: usize = 25;

/// See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId {
    /// [`GroupDef::incarnation`](super::GroupDef) of the group.
    pub incarnation: u64,
    /// The event.
    pub seq: Sequence,
    /// The lease number within the event's ordering key.
    pub lease: u64,
}

impl DeliveryId {
    /// The opaque string form.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; LEN];
        bytes[0] = VERSION;
        bytes[1..9].copy_from_slice(&self.incarnation.to_be_bytes());
        bytes[9..17].copy_from_slice(&self.seq.to_be_bytes());
        bytes[17..25].copy_from_slice(&self.lease.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses the string form; `None` for anything this gateway did not issue.
    pub fn decode(text: &str) -> Option<Self> {
        // why: refuse long input before decoding it (outside input stays linear and small).
        if text.len() > 64 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        if bytes.len() != LEN || bytes[0] != VERSION {
            return None;
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(w)
        };
        Some(Self {
            incarnation: word(1),
            seq: word(9),
            lease: word(17),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_id_round_trips_and_garbage_is_refused() {
        let id = DeliveryId {
            incarnation: 0xfeed_beef_0000_0001,
            seq: 77,
            lease: 3,
        };
        let text = id.encode();
        assert_eq!(text.len(), 34);
        assert_eq!(DeliveryId::decode(&text), Some(id));
        for bad in ["", "abc", &"A".repeat(34), &"A".repeat(100), "!!!!"] {
            assert_eq!(DeliveryId::decode(bad), None, "{bad:?}");
        }
    }
}
