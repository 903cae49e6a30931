//! The standalone edge proxy: a plain-HTTP listener where `Host: {clone}.{domain}[:port]`
//! reaches the clone's pod. Bodies stream both ways, the Host header is kept (WordPress
//! needs it), X-Forwarded-For/-Proto/-Host are set, hop-by-hop headers dropped. Unknown and
//! expired clones get a clear 404 page; an unreachable pod a 502 page.

use crate::store::CloneRow;
use crate::timestamps::now_ms;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where one ready clone is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `scheme://host:port` of the pod's WordPress.
    pub endpoint: String,
    pub expires_at_ms: i64,
}

/// The routing table: clone id → pod. Updated when clones become ready, are extended, or end.
#[derive(Clone, Default)]
pub struct EdgeRoutes {
    inner: Arc<RwLock<HashMap<String, Route>>>,
}

impl EdgeRoutes {
    pub fn insert(&self, clone: &CloneRow) {
        if let (Some(endpoint), Some(expires_at_ms)) = (&clone.endpoint, clone.expires_at) {
            self.inner
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    clone.clone_id.clone(),
                    Route {
                        endpoint: endpoint.trim_end_matches('/').to_string(),
                        expires_at_ms,
                    },
                );
        }
    }

    pub fn remove(&self, clone_id: &str) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(clone_id);
    }

    pub fn get(&self, clone_id: &str) -> Option<Route> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(clone_id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone)]
pub struct EdgeProxy {
    routes: EdgeRoutes,
    domain: String,
    client: Client<HttpConnector, Body>,
}

impl EdgeProxy {
    pub fn new(routes: EdgeRoutes, domain: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            routes,
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            client,
        }
    }

    /// The router serving every path of every host.
    pub fn router(self) -> axum::Router {
        axum::Router::new().fallback(proxy).with_state(self)
    }

    /// The clone label of a Host value, when it is `{label}.{domain}` with an optional port.
    pub fn clone_label(&self, host: &str) -> Option<String> {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
            _ => host,
        };
        let name = name.trim_end_matches('.');
        let label = name.strip_suffix(&self.domain)?.strip_suffix('.')?;
        (!label.is_empty() && !label.contains('.')).then(|| label.to_string())
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

async fn proxy(
    State(edge): State<EdgeProxy>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let Some(label) = edge.clone_label(&host) else {
        return page(
            StatusCode::NOT_FOUND,
            "No clone here",
            &format!(
                "This is the clonepool edge proxy. Reach a clone at http://&lt;clone&gt;.{}:&lt;port&gt;/ (the clone_url of its job).",
                html_escape(&edge.domain)
            ),
        );
    };
    let Some(route) = edge.routes.get(&label) else {
        return page(
            StatusCode::NOT_FOUND,
            "Clone not found",
            &format!(
                "No clone named <b>{}</b> is running. It may never have existed, may have expired, or may have been deleted.",
                html_escape(&label)
            ),
        );
    };
    if route.expires_at_ms <= now_ms() {
        return page(
            StatusCode::NOT_FOUND,
            "Clone expired",
            &format!(
                "The clone <b>{}</b> has expired and is being removed.",
                html_escape(&label)
            ),
        );
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let upstream: Uri = match format!("{}{}", route.endpoint, path_and_query).parse() {
        Ok(uri) => uri,
        Err(_) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "Bad clone endpoint",
                "The clone's pod endpoint is not a valid URL.",
            )
        }
    };
    *request.uri_mut() = upstream;
    *request.version_mut() = axum::http::Version::HTTP_11;
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    // HTTP/2 clients send :authority instead of Host; WordPress needs a Host.
    if !headers.contains_key(header::HOST) {
        if let Ok(value) = HeaderValue::from_str(&host) {
            headers.insert(header::HOST, value);
        }
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Ok(value) = HeaderValue::from_str(&host) {
        headers.insert("x-forwarded-host", value);
    }

    match edge.client.request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(err) => {
            tracing::warn!(clone = %label, error = %err, "edge: the clone's pod did not answer");
            page(
                StatusCode::BAD_GATEWAY,
                "Clone not answering",
                &format!(
                    "The clone <b>{}</b> exists but its pod did not answer. Try again in a moment.",
                    html_escape(&label)
                ),
            )
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title} · clonepool</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{title}</h1><p>{body}</p>\
         <p><small>clonepool edge proxy · {code}</small></p></body></html>",
        code = status.as_u16()
    );
    (status, Html(html)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::any;

    #[test]
    fn clone_labels_come_from_the_host_header() {
        let edge = EdgeProxy::new(EdgeRoutes::default(), "localhost");
        assert_eq!(
            edge.clone_label("shop.localhost:8080").as_deref(),
            Some("shop")
        );
        assert_eq!(edge.clone_label("Shop.LOCALHOST").as_deref(), Some("shop"));
        assert_eq!(
            edge.clone_label("shop.localhost.:80").as_deref(),
            Some("shop")
        );
        assert_eq!(edge.clone_label("localhost:8080"), None);
        assert_eq!(edge.clone_label("a.b.localhost:8080"), None);
        assert_eq!(edge.clone_label("shop.example.com"), None);
        assert_eq!(edge.clone_label("shoplocalhost"), None);
    }

    fn row(clone_id: &str, endpoint: &str, expires_at: i64) -> CloneRow {
        CloneRow {
            id: 1,
            clone_id: clone_id.into(),
            job_id: "job-1".into(),
            status: clonepool_common::api::CloneStatus::Ready,
            source_url: String::new(),
            clone_url: String::new(),
            clone_host: String::new(),
            ttl_minutes: 30,
            agent: None,
            claim_agents: vec![],
            last_claim_cold: false,
            node: None,
            pod_id: None,
            endpoint: Some(endpoint.into()),
            path: None,
            created_at: 0,
            ready_at: None,
            expires_at: Some(expires_at),
            ended_at: None,
            end_reason: None,
        }
    }

    /// An upstream that echoes what it received.
    async fn echo_upstream() -> SocketAddr {
        let app = axum::Router::new().fallback(any(|request: Request| async move {
            let headers = request.headers().clone();
            let method = request.method().clone();
            let uri = request.uri().clone();
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .unwrap();
            let get = |name: &str| {
                headers
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            };
            format!(
                "{method} {uri}\nhost={}\nxff={}\nproto={}\nxfh={}\nconnection-token={}\nbody={}",
                get("host"),
                get("x-forwarded-for"),
                get("x-forwarded-proto"),
                get("x-forwarded-host"),
                get("x-secret-hop"),
                String::from_utf8_lossy(&body)
            )
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    async fn edge_server(routes: EdgeRoutes) -> SocketAddr {
        let app = EdgeProxy::new(routes, "localhost").router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap()
        });
        addr
    }

    #[tokio::test]
    async fn requests_reach_the_clone_with_host_kept_and_forwarding_headers_set() {
        let upstream = echo_upstream().await;
        let routes = EdgeRoutes::default();
        routes.insert(&row(
            "shop",
            &format!("http://{upstream}"),
            now_ms() + 60_000,
        ));
        let edge = edge_server(routes).await;
        let client = reqwest::Client::new();
        let body = client
            .post(format!("http://{edge}/wp-login.php?x=1"))
            .header("host", format!("shop.localhost:{}", edge.port()))
            .header("connection", "x-secret-hop")
            .header("x-secret-hop", "must-not-pass")
            .body("log=admin")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.starts_with("POST /wp-login.php?x=1\n"), "{body}");
        assert!(
            body.contains(&format!("host=shop.localhost:{}", edge.port())),
            "{body}"
        );
        assert!(body.contains("xff=127.0.0.1"), "{body}");
        assert!(body.contains("proto=http"), "{body}");
        assert!(
            body.contains(&format!("xfh=shop.localhost:{}", edge.port())),
            "{body}"
        );
        assert!(body.contains("connection-token=\n"), "{body}");
        assert!(body.contains("body=log=admin"), "{body}");
    }

    #[tokio::test]
    async fn unknown_and_expired_clones_get_a_404_page() {
        let routes = EdgeRoutes::default();
        routes.insert(&row("old", "http://127.0.0.1:9", now_ms() - 1));
        let edge = edge_server(routes).await;
        let client = reqwest::Client::new();
        for (host, needle) in [
            ("nope.localhost", "No clone named <b>nope</b>"),
            ("old.localhost", "has expired"),
            ("localhost", "edge proxy"),
        ] {
            let response = client
                .get(format!("http://{edge}/"))
                .header("host", host)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{host}");
            assert!(response.text().await.unwrap().contains(needle), "{host}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_pod_gets_a_502_page() {
        let routes = EdgeRoutes::default();
        // Nothing listens on port 9 of loopback.
        routes.insert(&row("down", "http://127.0.0.1:9", now_ms() + 60_000));
        let edge = edge_server(routes).await;
        let response = reqwest::Client::new()
            .get(format!("http://{edge}/"))
            .header("host", "down.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502);
    }
}
