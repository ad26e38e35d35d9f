//! Benchmark: receipts (filled in by its issue).

fn main() {
    eprintln!("receipts benchmark: not written yet");
}
