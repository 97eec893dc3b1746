//! The hyper floor: the cheapest HTTP/1.1 proxy hyper and Tokio make, to measure
//! what a proxy built on them costs before any proxy logic. Each client connection
//! gets one upstream connection of its own, driven in the same task as the client's
//! (so there is no pool, no routing, no header rewriting, no timers and no body
//! handling: request and answer pass through as hyper parsed them), on a
//! current-thread runtime per worker thread, each accepting from the one listener. `compare` runs it beside stagegate as `hyper floor`;
//! whatever stagegate costs above it is its own work, and whatever the floor costs
//! above nginx is what hyper and Tokio cost.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;

/// Serves `listener` on `threads` worker threads until the process ends,
/// forwarding every request to `upstream`.
pub fn run(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    threads: usize,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut workers = Vec::new();
    for _ in 1..threads {
        let listener = listener.try_clone()?;
        workers.push(std::thread::spawn(move || worker(listener, upstream)));
    }
    worker(listener, upstream)?;
    for joined in workers {
        joined
            .join()
            .map_err(|_| io::Error::other("a floor worker thread panicked"))??;
    }
    Ok(())
}

fn worker(listener: std::net::TcpListener, upstream: SocketAddr) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let (client, _) = listener.accept().await?;
            tokio::task::spawn_local(serve(client, upstream));
        }
    })
}

/// One client connection and its upstream connection, both driven here.
async fn serve(client: TcpStream, upstream: SocketAddr) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let Ok((sender, upstream_conn)) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(server)).await
    else {
        return;
    };
    let sender = Rc::new(RefCell::new(sender));
    let service =
        service_fn(move |request: Request<Incoming>| forward(Rc::clone(&sender), request));
    let client_conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(client), service);
    // The client's side decides: an upstream connection that ends (after a
    // `Connection: close` passed through) must not cut the answer it just gave.
    let upstream = async move {
        let _ = upstream_conn.await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = client_conn => {}
        () = upstream => {}
    }
}

async fn forward(
    sender: Rc<RefCell<SendRequest<Incoming>>>,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::Error> {
    // The future owns what it needs once the request is queued: no borrow is
    // held across the wait.
    let answer = sender.borrow_mut().send_request(request);
    answer.await
}
