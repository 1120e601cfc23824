//! tonic over turmoil's simulated TCP: a stream newtype the server accepts
//! and a connector the client dials with.

use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint, Uri};
use turmoil::net::{TcpListener, TcpStream};

pub struct SimStream(pub TcpStream);

impl tonic::transport::server::Connected for SimStream {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepted connections, for `serve_with_incoming`.
pub fn incoming(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<SimStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(s, _)| SimStream(s));
        Some((conn, listener))
    })
}

/// A lazily connecting channel to `host:port` inside the simulation, with
/// the keepalive settings walrep needs after partitions.
pub fn channel(host: &str, port: u16, cfg: &walrep::Config) -> Channel {
    let endpoint = Endpoint::try_from(format!("http://{host}:{port}")).unwrap();
    walrep::channel_settings(endpoint, cfg).connect_with_connector_lazy(tower::service_fn(
        |uri: Uri| async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, std::io::Error>(TokioIo::new(SimStream(stream)))
        },
    ))
}
