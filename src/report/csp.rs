//! Content-Security-Policy for our self-contained pages: no external
//! anything, and inline code allowed only by the SHA-256 of the exact
//! `<script>` and `<style>` blocks the template holds (no `unsafe-inline`),
//! so injected markup cannot run script even if escaping ever failed.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Hashes of every `<script>` (without attributes: data blocks are
/// `type="application/json"` and never run) and `<style>` block in `html`.
fn hashes(html: &str, open: &str, close: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(close) else { break };
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        out.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end..];
    }
    out
}

/// The policy for a page template. `connect-src 'self'` lets the live page
/// follow its event stream and post answers; nothing else leaves the page.
pub fn policy_for(template: &str) -> String {
    let scripts = hashes(template, "<script>", "</script>");
    let styles = hashes(template, "<style>", "</style>");
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'",
        if scripts.is_empty() {
            "'none'".to_owned()
        } else {
            scripts.join(" ")
        },
        if styles.is_empty() {
            "'none'".to_owned()
        } else {
            styles.join(" ")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_only_executable_blocks() {
        let page = "<style>a{}</style><script type=\"application/json\">{}</script>\
                    <script>run()</script>";
        let p = policy_for(page);
        // echo -n 'run()' | openssl dgst -sha256 -binary | base64
        let run = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"run()"));
        let style = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"a{}"));
        assert!(p.contains(&format!("script-src 'sha256-{run}';")), "{p}");
        assert!(p.contains(&format!("style-src 'sha256-{style}';")), "{p}");
        assert!(!p.contains("unsafe"), "{p}");
        assert!(policy_for("<p>").contains("script-src 'none'"));
    }
}
