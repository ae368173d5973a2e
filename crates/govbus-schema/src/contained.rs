//! Third-party parsers that can panic on odd input (apache-avro's name
//! parser, the CEL grammar) run contained: their panic is caught and
//! becomes a refusal. [`is_contained`] lets a binary's panic hook keep such
//! a caught panic out of the logs, where a line saying "panicked" would
//! read as a crash.

use std::cell::Cell;
use std::panic::UnwindSafe;

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, catching a panic in it.
pub fn run<T>(f: impl FnOnce() -> T + UnwindSafe) -> std::thread::Result<T> {
    let before = CONTAINED.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(f);
    CONTAINED.with(|c| c.set(before));
    r
}

/// Whether this thread is inside [`run`] (a panic now is caught).
pub fn is_contained() -> bool {
    CONTAINED.with(Cell::get)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_inside_is_caught_and_known_as_contained() {
        assert!(!super::is_contained());
        let inside = super::run(super::is_contained).unwrap();
        assert!(inside);
        let caught = super::run(|| -> () { panic!("odd input") });
        assert!(caught.is_err());
        assert!(!super::is_contained(), "contained only inside run");
    }
}
