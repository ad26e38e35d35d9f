//! The guest's PID 1 (filled in by the vmm issue).

fn main() {
    eprintln!("openclaw-guest-init: not built yet");
    std::process::exit(1);
}
