//! Fuzzing on stable Rust: seeds mutated at random (bit flips,
//! truncations, insertions, interesting bytes, splices) and fed to a
//! target that must return, never panic, whatever the input. Every
//! decoder of outside bytes has a target (`govbus_schema::fuzz`, and
//! beside the registry, the router's control records, the HTTP
//! credentials, secret redaction); each crate's tests run them for a bounded number of
//! inputs, and the long form runs them for as long as asked:
//!
//! ```sh
//! GOVBUS_FUZZ_SECONDS=600 GOVBUS_FUZZ_SEED=$RANDOM cargo test --release fuzz_ -- --nocapture
//! ```
//!
//! A failing input is printed (hex) with the seed that found it, so it
//! reproduces; `cargo fuzz` targets in `fuzz/` call the same functions.

/// A small PRNG (xorshift64*): reproducible from its seed, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Bytes a mutation likes to put in: JSON and Avro structure, varint
/// continuation, zero, the largest byte.
const INTERESTING: [u8; 10] = [b'{', b'[', b'"', b'0', b':', b'%', 0xff, 0x80, 0x00, 0x7f];

/// Changes `d` in one to seven places.
pub fn mutate(rng: &mut Rng, d: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(7) {
        if d.is_empty() {
            d.push(rng.next_u64() as u8);
            continue;
        }
        let i = rng.below(d.len());
        match rng.below(6) {
            0 => {
                if let Some(b) = d.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => d.truncate(i),
            2 => d.insert(i, rng.next_u64() as u8),
            3 => {
                if let Some(b) = d.get_mut(i) {
                    *b = INTERESTING[rng.below(INTERESTING.len())];
                }
            }
            4 => {
                // A varint claiming a huge length or count.
                let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
                d.splice(i..i, huge);
            }
            _ => {
                let j = rng.below(d.len());
                let chunk: Vec<u8> = d.get(i.min(j)..i.max(j)).unwrap_or_default().to_vec();
                d.splice(i..i, chunk);
            }
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    /// Inputs fed to the target.
    pub executions: u64,
    /// The seed it ran from.
    pub seed: u64,
}

/// Feeds `target` mutations of `seeds`: `rounds` of them, or, with
/// `GOVBUS_FUZZ_SECONDS` set, as many as fit in that time (from
/// `GOVBUS_FUZZ_SEED`, else a fixed seed). A panic in the target is
/// reported with the input and the seed, then re-raised.
pub fn run(name: &str, seeds: &[Vec<u8>], rounds: u64, target: impl Fn(&[u8])) -> Ran {
    let seed = std::env::var("GOVBUS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x60b0);
    let until = std::env::var("GOVBUS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    let mut rng = Rng::new(seed);
    let mut executions = 0u64;
    // Each seed as it is, first.
    let mut next = seeds
        .iter()
        .cloned()
        .collect::<std::collections::VecDeque<_>>();
    loop {
        let done = match until {
            Some(t) => std::time::Instant::now() >= t,
            None => executions >= rounds,
        };
        if done {
            break;
        }
        let input = match next.pop_front() {
            Some(s) => s,
            None => {
                let mut d = seeds
                    .get(rng.below(seeds.len()))
                    .cloned()
                    .unwrap_or_default();
                mutate(&mut rng, &mut d);
                d
            }
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        executions += 1;
        if let Err(p) = outcome {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            eprintln!("fuzz {name}: a panic on input {hex} (GOVBUS_FUZZ_SEED={seed}, execution {executions})");
            std::panic::resume_unwind(p);
        }
    }
    if until.is_some() {
        eprintln!("fuzz {name}: {executions} executions, no crash (GOVBUS_FUZZ_SEED={seed})");
    }
    Ran { executions, seed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_redaction_never_panics() {
        let seeds = vec![
            b"postgres://u:pw@h/db".to_vec(),
            b"host=h password='a b\\' c' x=1".to_vec(),
            b"https://h/?token=t&sig=".to_vec(),
            // Found by the fuzzer: a two-byte separator before the key.
            "host=h\u{a0}password\u{fffd}='a asswsswordpassword='a b]"
                .as_bytes()
                .to_vec(),
        ];
        run("redact", &seeds, 50_000, |d| {
            let _ = crate::secret::redact(&String::from_utf8_lossy(d));
        });
    }

    #[test]
    fn a_panic_is_reported_and_raised() {
        let r = std::panic::catch_unwind(|| {
            run("self", &[vec![1]], 10, |d| {
                assert!(d.len() < 2, "two bytes");
            })
        });
        assert!(r.is_err(), "mutations reach two bytes within 10 inputs");
    }
}
