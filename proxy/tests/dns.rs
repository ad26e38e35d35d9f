//! The DNS responder over real UDP and TCP sockets.
#![allow(clippy::unwrap_used)]

mod common;

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{rdata::A, Name, RData, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    q.to_vec().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_names_resolve_to_the_proxy_others_nxdomain_over_udp_and_tcp() {
    let gate = common::Recorder {
        dns_allowed: vec!["api.example.com".into()],
        ..Default::default()
    };
    let env = common::Env::start_with(&[b"http/1.1"], gate, |cfg| {
        cfg.advertise = "10.200.0.1".parse().unwrap();
    })
    .await;
    let dns = env.proxy.dns_addr().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask_udp = |name: &'static str, t| {
        let udp = &udp;
        async move {
            udp.send_to(&query(name, t), dns).await.unwrap();
            let mut buf = [0u8; 1500];
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), udp.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            Message::from_vec(&buf[..n]).unwrap()
        }
    };
    let a = ask_udp("API.example.com.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a.answers.len(), 1);
    assert_eq!(
        a.answers[0].data,
        RData::A(A("10.200.0.1".parse().unwrap()))
    );
    let aaaa = ask_udp("api.example.com.", RecordType::AAAA).await;
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    let nx = ask_udp("hooks.slack.com.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    // TCP: two length-prefixed queries on one connection.
    let mut tcp = TcpStream::connect(dns).await.unwrap();
    for (name, want) in [
        ("api.example.com.", ResponseCode::NoError),
        ("evil.example.", ResponseCode::NXDomain),
    ] {
        let q = query(name, RecordType::A);
        tcp.write_all(&(q.len() as u16).to_be_bytes())
            .await
            .unwrap();
        tcp.write_all(&q).await.unwrap();
        let len = tcp.read_u16().await.unwrap();
        let mut buf = vec![0u8; len as usize];
        tcp.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert_eq!(m.metadata.response_code, want, "{name}");
        assert_eq!(m.answers.len(), usize::from(want == ResponseCode::NoError));
    }
    env.proxy.shutdown().await;
}
