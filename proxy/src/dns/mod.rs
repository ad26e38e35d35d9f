//! The sandbox's resolver: UDP and TCP on one port. The gate decides each
//! name; allowed names get the proxy's address (A), nothing for AAAA and
//! other types, the rest NXDOMAIN.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{rdata::A, RData, Record, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{watch, Semaphore},
};

use crate::decide::{DnsVerdict, Gate};

const TTL: u32 = 60;
const TCP_IDLE: Duration = Duration::from_secs(10);
const MAX_TCP_CONNS: usize = 32;

/// Answer one DNS message; None when it cannot even be answered with an error.
pub(crate) fn answer(query: &[u8], gate: &dyn Gate, proxy: Ipv4Addr) -> Option<Vec<u8>> {
    let req = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) if query.len() >= 2 => {
            let id = u16::from_be_bytes([query[0], query[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
        Err(_) => return None,
    };
    let meta = &req.metadata;
    if meta.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(meta.id, meta.op_code);
    resp.metadata.recursion_desired = meta.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_queries(req.queries.iter().cloned());
    let [q] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp.to_vec().ok();
    };
    if meta.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp.to_vec().ok();
    }
    let name = q.name.to_ascii();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match gate.dns(&name) {
        DnsVerdict::NxDomain => resp.metadata.response_code = ResponseCode::NXDomain,
        DnsVerdict::ResolveToProxy => {
            resp.metadata.authoritative = true;
            if q.query_type == RecordType::A {
                resp.add_answer(Record::from_rdata(q.name.clone(), TTL, RData::A(A(proxy))));
            }
        }
    }
    resp.to_vec().ok()
}

pub(crate) async fn serve_udp(
    sock: UdpSocket,
    gate: Arc<dyn Gate>,
    proxy: Ipv4Addr,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = sock.recv_from(&mut buf) => {
                let Ok((n, peer)) = r else { continue };
                if let Some(out) = answer(&buf[..n], &*gate, proxy) {
                    let _ = sock.send_to(&out, peer).await;
                }
            }
        }
    }
}

pub(crate) async fn serve_tcp(
    listener: TcpListener,
    gate: Arc<dyn Gate>,
    proxy: Ipv4Addr,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CONNS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => {
                let Ok((tcp, _)) = r else { continue };
                let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
                let gate = gate.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    let _ = serve_tcp_conn(tcp, &*gate, proxy).await;
                });
            }
        }
    }
    conns.shutdown().await;
}

async fn serve_tcp_conn(
    mut tcp: TcpStream,
    gate: &dyn Gate,
    proxy: Ipv4Addr,
) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, tcp.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return Ok(()),
        };
        let mut msg = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, tcp.read_exact(&mut msg))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(out) = answer(&msg, gate, proxy) else {
            return Ok(());
        };
        let len = u16::try_from(out.len()).map_err(|_| std::io::Error::other("answer too long"))?;
        let mut frame = Vec::with_capacity(out.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&out);
        tcp.write_all(&frame).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{ConnInfo, GateRequest, GateVerdict, Refusal};
    use hickory_proto::{op::Query, rr::Name};

    struct OnlyExample;
    #[async_trait::async_trait]
    impl Gate for OnlyExample {
        fn dns(&self, name: &str) -> DnsVerdict {
            if name == "example.com" {
                DnsVerdict::ResolveToProxy
            } else {
                DnsVerdict::NxDomain
            }
        }
        async fn request(&self, _: &mut GateRequest, _: &ConnInfo) -> GateVerdict {
            GateVerdict::Forward
        }
        fn refused(&self, _: Refusal) {}
    }

    fn ask(name: &str, t: RecordType) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        let out = answer(
            &q.to_vec().expect("encode"),
            &OnlyExample,
            Ipv4Addr::new(10, 0, 0, 1),
        )
        .expect("answer");
        Message::from_vec(&out).expect("decode")
    }

    #[test]
    fn allowed_name_gets_proxy_address_others_nxdomain_aaaa_empty() {
        let a = ask("Example.com.", RecordType::A);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].data, RData::A(A(Ipv4Addr::new(10, 0, 0, 1))));
        let aaaa = ask("example.com.", RecordType::AAAA);
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
        let nx = ask("evil.example.", RecordType::A);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.answers.is_empty());
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        assert!(answer(&[1], &OnlyExample, Ipv4Addr::LOCALHOST).is_none());
        let out = answer(&[0xab, 0xcd, 0xff], &OnlyExample, Ipv4Addr::LOCALHOST).expect("formerr");
        let m = Message::from_vec(&out).expect("decode");
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }
}
