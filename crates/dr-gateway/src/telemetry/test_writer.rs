//! Test support: [`Captured`], a log writer that keeps what it is given, for the
//! tests of the printed output.

use std::io;
use std::sync::{Arc, Mutex};

/// Everything written through any of its clones; `writer()` is a `MakeWriter`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// A `MakeWriter` (a closure) writing here.
    pub(crate) fn writer(&self) -> impl Fn() -> Captured + Send + Sync + 'static {
        let captured = self.clone();
        move || captured.clone()
    }

    /// What was written so far, as text.
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
