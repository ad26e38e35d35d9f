//! A mock HTTPS upstream for the kvm backend's harness test, run inside L1
//! behind the session proxy: an OpenAI-style `POST /v1/chat/completions`
//! (a JSON answer, or server-sent events when the request asks to stream)
//! that answers only the real API key, and `GET /node/hello` (JSON) for a
//! Node agent's fetch. Every request is printed as one `UPSTREAM` line: the
//! test reads what the upstream saw (that the credential was injected).
//! Built static, like the guest init; std threads and rustls only.
//!
//! Usage: mock_upstream ADDR CERT.pem KEY.pem EXPECTED_AUTHORIZATION

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, cert, key, auth] = args.as_slice() else {
        eprintln!("usage: mock_upstream ADDR CERT.pem KEY.pem EXPECTED_AUTHORIZATION");
        std::process::exit(2);
    };
    let config = match tls_config(cert, key) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("mock_upstream: {e}");
            std::process::exit(1);
        }
    };
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock_upstream: bind {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("UPSTREAM listening on {addr}");
    for conn in listener.incoming().flatten() {
        let (config, auth) = (config.clone(), auth.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve(conn, config, &auth) {
                println!("UPSTREAM error {e}");
            }
        });
    }
}

fn tls_config(cert: &str, key: &str) -> Result<rustls::ServerConfig, String> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(
        std::fs::File::open(cert).map_err(|e| format!("{cert}: {e}"))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("{cert}: {e}"))?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("{key}: {e}"))?,
    ))
    .map_err(|e| format!("{key}: {e}"))?
    .ok_or("no private key")?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())
}

fn serve(tcp: TcpStream, config: Arc<rustls::ServerConfig>, auth: &str) -> Result<(), String> {
    let conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut tls);
    let mut request_line = String::new();
    reader
        .read_line(&mut request_line)
        .map_err(|e| e.to_string())?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    drop(reader);
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let auth_state = match header("authorization") {
        Some(v) if v == auth => "real",
        Some(v) if v.contains("ocs_") => "placeholder",
        Some(_) => "other",
        None => "none",
    };
    let stream = body.replace(' ', "").contains("\"stream\":true");
    println!(
        "UPSTREAM {method} {path} host={} auth={auth_state} stream={stream}",
        header("host").unwrap_or("")
    );
    let response = match (method, path) {
        ("POST", "/v1/chat/completions") if auth_state != "real" => respond(
            401,
            "application/json",
            r#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#,
        ),
        ("POST", "/v1/chat/completions") if stream => {
            let mut events = String::new();
            for (i, piece) in ["Hello", " from", " the mock"].iter().enumerate() {
                let role = if i == 0 { r#""role":"assistant","# } else { "" };
                events.push_str(&format!(
                    "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{{role}\"content\":\"{piece}\"}},\"finish_reason\":null}}]}}\n\n"
                ));
            }
            events.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
            events.push_str("data: [DONE]\n\n");
            respond(200, "text/event-stream", &events)
        }
        ("POST", "/v1/chat/completions") => respond(
            200,
            "application/json",
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":4,"total_tokens":5}}"#,
        ),
        ("GET", "/node/hello") => respond(200, "application/json", r#"{"hello":"node"}"#),
        _ => respond(404, "text/plain", "not here\n"),
    };
    tls.write_all(response.as_bytes())
        .map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

fn respond(status: u16, content_type: &str, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
