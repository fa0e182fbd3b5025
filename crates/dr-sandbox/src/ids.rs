//! Identifier generation: DR-looking ids, reproducible when a seed is given.
//!
//! Orders and line items get numeric strings (`231388420336`), charges, sources, events and
//! capture/cancel operations get UUIDs, fulfillments `ful_` + UUID (DR's "Capturing and cancelling charges" page). With a seed the
//! sequence is fixed, so two runs with the same seed and the same calls produce the same ids.

use rand::{rngs::StdRng, Rng, SeedableRng};

/// Source of ids.
#[derive(Debug)]
pub(crate) struct IdGen {
    rng: StdRng,
}

impl IdGen {
    /// Seeded (deterministic) when `seed` is set, otherwise from OS entropy.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { rng }
    }

    /// A random v4 UUID drawn from this generator.
    pub(crate) fn uuid(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.random();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }

    /// A DR numeric id: 8 random digits followed by `0336` like the test-mode ids in DR's
    /// documentation examples (`231388420336`, `158140150336`).
    pub(crate) fn numeric(&mut self) -> String {
        let n: u64 = self.rng.random_range(10_000_000..100_000_000);
        format!("{n}0336")
    }

    /// A sales transaction id shaped like DR's (`1117116275_000010_3700100415`).
    pub(crate) fn sales_transaction(&mut self) -> String {
        let a: u64 = self.rng.random_range(1_000_000_000..10_000_000_000);
        let b: u32 = self.rng.random_range(1..1_000_000);
        let c: u64 = self.rng.random_range(1_000_000_000..10_000_000_000);
        format!("{a}_{b:06}_{c}")
    }

    /// A fulfillment id.
    pub(crate) fn fulfillment(&mut self) -> String {
        format!("ful_{}", self.uuid())
    }
}
