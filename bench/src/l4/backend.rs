//! The `stream` service's endpoint: the L4 protocol's server (see
//! [`super`]) on one thread, as each HTTP/1.1 endpoint is an nginx with one
//! worker. Run by `laneway-bench l4-backend` inside a pod.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{CHUNK_LEN, MESSAGE_LEN, Mode, parse_hello};

/// Serves on `listen` as endpoint `name` until killed.
pub fn serve(listen: SocketAddr, name: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let name: &'static str = Box::leak(format!("{name}\n").into_boxed_str());
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (conn, _) = listener.accept().await?;
            tokio::spawn(async move {
                // A client that goes away mid-run is the end of its run.
                let _ = serve_connection(conn, name).await;
            });
        }
    })
}

async fn serve_connection(mut conn: TcpStream, name: &str) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut hello = [0u8; 8];
    conn.read_exact(&mut hello).await?;
    match parse_hello(&hello) {
        Some(Mode::Name) => conn.write_all(name.as_bytes()).await,
        Some(Mode::RoundTrip) => {
            let mut message = [0u8; MESSAGE_LEN];
            loop {
                conn.read_exact(&mut message).await?;
                conn.write_all(&message).await?;
            }
        }
        Some(Mode::Bulk) => {
            let chunk = vec![b'x'; CHUNK_LEN];
            loop {
                conn.write_all(&chunk).await?;
            }
        }
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not the benchmark's L4 hello",
        )),
    }
}
