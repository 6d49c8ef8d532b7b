//! A bench-only TCP proxy that holds every byte on its way to the server `latency` long,
//! in order, as a network between two regions would: each call costs its round trip
//! plus `latency`, whatever its size, and calls on many connections wait side by side.
//! `BENCH_PROXY_LATENCY_MS` puts it before LocalStack (15 or 40 ms: SQS across a
//! continent or an ocean); LocalStack answers at once, which hides what a network
//! costs a forwarder that waits on its calls.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Starts the proxy to `target` on a thread of its own (its own runtime, so the
/// measured loops' runtime does not carry it); returns its address.
pub fn spawn(target: SocketAddr, latency: Duration) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(relay(client, target, latency));
            }
        });
    });
    rx.recv().expect("the proxy started")
}

async fn relay(client: TcpStream, target: SocketAddr, latency: Duration) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Client to server through the delay line: each chunk leaves `latency` after it came.
    let (chunks, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if chunks
                        .send((Instant::now() + latency, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if server_write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = server_write.shutdown().await;
    });
    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    reader.abort();
    writer.abort();
}
