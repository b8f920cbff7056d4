//! The one policy for HTTP that Helix sends on a user's behalf (the `http.request` job
//! kind, workflow `http` steps, outbound webhooks): http and https to public addresses
//! only, unless [`OutboundConfig`] allows private networks or lists the host.
//!
//! An address is checked where it becomes known, so no path reaches inside:
//! - a name is checked **after** resolution, by the client's own resolver, which keeps
//!   only public addresses: a name pointing inside (or re-pointed there between two
//!   requests, DNS rebinding) never gets a connection;
//! - an IP literal never reaches a resolver, so [`check_url`] refuses it before sending
//!   ([`Outbound::request`] does both);
//! - every redirect hop goes through [`check_url`] again (its names through the resolver).
//!
//! Proxies from the environment are ignored: through a proxy the resolver would see the
//! proxy's name, not the target's. Bodies are read through [`read_capped`], so an answer
//! cannot fill memory.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Method, RequestBuilder, Response, Url, redirect};

use crate::config::OutboundConfig;

/// What a response body may hold at most before reading stops.
pub const MAX_BODY: usize = 10 * 1024 * 1024;
/// Redirects followed at most (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Unspecified,
    ThisNetwork,
    Loopback,
    Private,
    SharedCgnat,
    LinkLocal,
    UniqueLocal,
    SiteLocal,
    Multicast,
    Broadcast,
    Documentation,
    Benchmarking,
    Reserved,
}

impl Class {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Unspecified => "an unspecified address",
            Self::ThisNetwork => "a \"this network\" address (0.0.0.0/8)",
            Self::Loopback => "a loopback address",
            Self::Private => "a private network address (RFC 1918)",
            Self::SharedCgnat => "a carrier-grade NAT address (100.64.0.0/10)",
            Self::LinkLocal => "a link-local address (cloud metadata services live here)",
            Self::UniqueLocal => "a unique-local address (fc00::/7)",
            Self::SiteLocal => "a site-local address (fec0::/10)",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "a documentation address",
            Self::Benchmarking => "a benchmarking address (198.18.0.0/15)",
            Self::Reserved => "a reserved address",
        }
    }
}

/// Why a request was not sent. Its text names the target and the address class, never
/// anything the target would have answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Scheme(String),
    NoHost,
    /// an IP literal, or the only kind of address a name resolved to
    Address {
        host: String,
        ip: IpAddr,
        class: Class,
    },
    /// a host listed in `allowed_hosts` only with other ports
    Port {
        host: String,
        port: u16,
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheme(scheme) => write!(f, "outbound request refused: scheme {scheme:?} (only http and https)"),
            Self::NoHost => write!(f, "outbound request refused: the URL has no host"),
            Self::Address { host, ip, class } if host == &ip.to_string() => write!(
                f,
                "outbound request refused: {ip} is {}; only public addresses are reached unless HELIX_OUTBOUND_ALLOW lists the host",
                class.describe()
            ),
            Self::Address { host, ip, class } => write!(
                f,
                "outbound request refused: {host} resolves to {ip}, {}; only public addresses are reached unless HELIX_OUTBOUND_ALLOW lists the host",
                class.describe()
            ),
            Self::Port { host, port } => {
                write!(
                    f,
                    "outbound request refused: {host}:{port} is not in HELIX_OUTBOUND_ALLOW (the host is, with other ports)"
                )
            }
        }
    }
}

impl std::error::Error for Refused {}

/// Why a request could not be made or its answer not read.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0}")]
    Refused(Refused),
    #[error("invalid URL: {0}")]
    Url(String),
    #[error("response body larger than {} MiB", .0 / (1024 * 1024))]
    TooLarge(usize),
    #[error("request failed: {}", with_sources(.0))]
    Http(reqwest::Error),
}

impl OutboundError {
    /// Whether the same request can never succeed (a retry is pointless).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Http(_))
    }
}

impl From<reqwest::Error> for OutboundError {
    /// A refusal by the resolver or the redirect policy arrives wrapped in reqwest's
    /// error, whose text does not show it: it is found in the source chain.
    fn from(e: reqwest::Error) -> Self {
        match refusal_in(&e) {
            Some(refused) => Self::Refused(refused.clone()),
            None => Self::Http(e.without_url()),
        }
    }
}

/// reqwest's text leaves out why (a refused connection, a timeout): its sources say.
fn with_sources(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}

fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(e);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = e.source();
    }
    None
}

/// The class of a non-public address; `None` for a public one. IPv6 forms that carry an
/// IPv4 address (mapped, compatible, NAT64, 6to4) are judged by that address.
pub fn classify(ip: IpAddr) -> Option<Class> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Class> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() => Class::Unspecified,
        _ if a == 0 => Class::ThisNetwork,
        _ if ip.is_loopback() => Class::Loopback,
        _ if ip.is_private() => Class::Private,
        _ if a == 100 && (b & 0xc0) == 64 => Class::SharedCgnat,
        _ if ip.is_link_local() => Class::LinkLocal,
        _ if ip.is_broadcast() => Class::Broadcast,
        _ if ip.is_multicast() => Class::Multicast,
        _ if ip.is_documentation() => Class::Documentation,
        _ if a == 198 && (b & 0xfe) == 18 => Class::Benchmarking,
        // 192.0.0.0/24 (IETF assignments), 240.0.0.0/4 (future use)
        _ if (a == 192 && b == 0 && c == 0) || a >= 240 => Class::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Class> {
    let s = ip.segments();
    let embedded = |hi: usize| {
        let o = ip.octets();
        Ipv4Addr::new(o[hi], o[hi + 1], o[hi + 2], o[hi + 3])
    };
    Some(match () {
        _ if ip.is_unspecified() => Class::Unspecified,
        _ if ip.is_loopback() => Class::Loopback,
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated)
        _ if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) => return classify_v4(embedded(12)),
        // 64:ff9b::/96 reaches IPv4 through NAT64, 2002::/16 through 6to4
        _ if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => return classify_v4(embedded(12)),
        _ if s[0] == 0x2002 => return classify_v4(embedded(2)),
        _ if (s[0] & 0xffc0) == 0xfe80 => Class::LinkLocal,
        _ if (s[0] & 0xffc0) == 0xfec0 => Class::SiteLocal,
        _ if (s[0] & 0xfe00) == 0xfc00 => Class::UniqueLocal,
        _ if ip.is_multicast() => Class::Multicast,
        _ if s[0] == 0x2001 && s[1] == 0xdb8 => Class::Documentation,
        // 3fff::/20, documentation since RFC 9637
        _ if (s[0] & 0xfff0) == 0x3ff0 => Class::Documentation,
        // 100::/64, discard-only
        _ if s[..4] == [0x100, 0, 0, 0] => Class::Reserved,
        _ => return None,
    })
}

/// Lower-case, without a trailing dot and without IPv6 brackets: the form entries and
/// hosts are compared in.
fn normal(host: &str) -> String {
    host.trim().trim_end_matches('.').trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// An `allowed_hosts` entry as (host, port): `host`, `host:port`, `[v6]`, `[v6]:port`
/// or a bare IPv6 address.
fn entry(raw: &str) -> (String, Option<u16>) {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        return (normal(host), tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match raw.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (normal(host), Some(port)),
            Err(_) => (normal(raw), None),
        },
        _ => (normal(raw), None),
    }
}

/// The ports `allowed_hosts` lists for `host`: `Some(vec![])` when it is listed without
/// a port (any port), `None` when it is not listed.
fn listed_ports(config: &OutboundConfig, host: &str) -> Option<Vec<u16>> {
    let host = normal(host);
    let mut found = None;
    for (name, port) in config.allowed_hosts.iter().map(|e| entry(e)) {
        if name == host {
            match port {
                None => return Some(Vec::new()),
                Some(port) => found.get_or_insert_with(Vec::new).push(port),
            }
        }
    }
    found
}

/// Whether `url` may be requested as far as can be told without resolving it: its
/// scheme, and its host when that is an IP literal. A name is judged by the client's
/// resolver, after resolution.
pub fn check_url(config: &OutboundConfig, url: &Url) -> Result<(), Refused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::Scheme(url.scheme().to_owned()));
    }
    let host_text = url.host_str().filter(|h| !h.is_empty()).ok_or(Refused::NoHost)?;
    if config.allow_private_networks {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(0);
    let listed = listed_ports(config, host_text);
    if let Some(ports) = &listed
        && (ports.is_empty() || ports.contains(&port))
    {
        return Ok(());
    }
    // the URL parser has already turned every IPv4 spelling (2130706433, 0x7f.1) into
    // dotted form, and keeps IPv6 in brackets
    let Ok(ip) = normal(host_text).parse::<IpAddr>() else {
        // the resolver lets a listed name resolve inside whatever the port: the port is
        // held to the list here
        return match listed {
            Some(_) => Err(Refused::Port { host: normal(host_text), port }),
            None => Ok(()),
        };
    };
    match classify(ip) {
        Some(class) => Err(Refused::Address { host: ip.to_string(), ip, class }),
        None => Ok(()),
    }
}

/// Resolves names and keeps their public addresses only (all of them for a listed host
/// or when private networks are allowed).
struct PublicResolver {
    config: Arc<OutboundConfig>,
}

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let config = self.config.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if config.allow_private_networks || listed_ports(&config, &host).is_some() {
                return Ok(Box::new(resolved.into_iter()) as Addrs);
            }
            let (public, inside): (Vec<SocketAddr>, Vec<SocketAddr>) =
                resolved.into_iter().partition(|a| classify(a.ip()).is_none());
            match (public.is_empty(), inside.first()) {
                (true, Some(first)) => {
                    let ip = first.ip();
                    let class = classify(ip).unwrap_or(Class::Reserved);
                    Err(Box::new(Refused::Address { host: normal(&host), ip, class }) as _)
                }
                _ => Ok(Box::new(public.into_iter()) as Addrs),
            }
        })
    }
}

/// A client that keeps to the policy for every name it resolves and every redirect it
/// follows. IP literals of the first URL are the caller's to check ([`check_url`]), or
/// use [`Outbound`], which does.
pub fn client(config: &OutboundConfig, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let config = Arc::new(config.clone());
    let hops = config.clone();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .no_proxy()
        .dns_resolver(Arc::new(PublicResolver { config }))
        .redirect(redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error("too many redirects");
            }
            match check_url(&hops, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        }))
        .build()
}

/// A policy-keeping client with its configuration: what request senders hold.
#[derive(Clone)]
pub struct Outbound {
    config: Arc<OutboundConfig>,
    client: reqwest::Client,
}

impl Outbound {
    pub fn new(config: &OutboundConfig, timeout: Duration) -> reqwest::Result<Self> {
        Ok(Self { config: Arc::new(config.clone()), client: client(config, timeout)? })
    }

    /// A request to `url` once its scheme and literal host passed [`check_url`].
    pub fn request(&self, method: Method, url: &str) -> Result<RequestBuilder, OutboundError> {
        let url = Url::parse(url).map_err(|e| OutboundError::Url(e.to_string()))?;
        check_url(&self.config, &url).map_err(OutboundError::Refused)?;
        Ok(self.client.request(method, url))
    }
}

/// Reads a body of at most `limit` bytes; a longer one stops the read at the limit.
pub async fn read_capped(mut response: Response, limit: usize) -> Result<Vec<u8>, OutboundError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(OutboundError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(OutboundError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn config(allow: &[&str]) -> OutboundConfig {
        OutboundConfig { allow_private_networks: false, allowed_hosts: allow.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn addresses_are_classified() {
        use Class::*;
        let table: &[(&str, Option<Class>)] = &[
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("2606:4700:4700::1111", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.16.5.4", Some(Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Private)),
            ("169.254.169.254", Some(LinkLocal)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("100.128.0.1", None),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(ThisNetwork)),
            ("224.0.0.1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.1", Some(Documentation)),
            ("203.0.113.1", Some(Documentation)),
            ("198.18.0.1", Some(Benchmarking)),
            ("192.0.0.8", Some(Reserved)),
            ("240.0.0.1", Some(Reserved)),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fe80::1", Some(LinkLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:8.8.8.8", None),
            ("::10.0.0.1", Some(Private)),
            ("64:ff9b::a00:1", Some(Private)),
            ("2002:a9fe:a9fe::1", Some(LinkLocal)),
        ];
        for (ip, want) in table {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(classify(ip), *want, "{ip}");
        }
    }

    #[test]
    fn urls_are_checked() {
        // (allowed_hosts, url, refused?)
        let table: &[(&[&str], &str, bool)] = &[
            (&[], "http://8.8.8.8/", false),
            (&[], "https://example.com/x", false),
            (&[], "ftp://example.com/", true),
            (&[], "file:///etc/passwd", true),
            (&[], "http://127.0.0.1:8080/", true),
            (&[], "http://2130706433/", true),
            (&[], "http://0x7f.1/", true),
            (&[], "http://169.254.169.254/latest/meta-data/", true),
            (&[], "http://[::1]/", true),
            (&[], "http://[::ffff:10.0.0.1]/", true),
            (&[], "http://10.0.0.1/", true),
            (&["127.0.0.1"], "http://127.0.0.1:9/", false),
            (&["127.0.0.1:9"], "http://127.0.0.1:9/", false),
            (&["127.0.0.1:9"], "http://127.0.0.1:10/", true),
            (&["[::1]:80"], "http://[::1]/", false),
            (&["::1"], "http://[::1]:81/", false),
            (&["Internal.Example."], "http://internal.example:81/", false),
            (&["internal.example:80"], "http://internal.example:81/", true),
        ];
        for (allow, url, refused) in table {
            let got = check_url(&config(allow), &Url::parse(url).unwrap());
            assert_eq!(got.is_err(), *refused, "{url} with {allow:?}: {got:?}");
        }
        let open = OutboundConfig { allow_private_networks: true, allowed_hosts: Vec::new() };
        assert!(check_url(&open, &Url::parse("http://127.0.0.1/").unwrap()).is_ok());
        assert!(check_url(&open, &Url::parse("gopher://127.0.0.1/").unwrap()).is_err());
    }

    async fn send(outbound: &Outbound, url: &str) -> Result<Response, OutboundError> {
        Ok(outbound.request(Method::GET, url)?.send().await?)
    }

    #[tokio::test]
    async fn names_resolving_inside_are_refused_after_resolution() {
        let outbound = Outbound::new(&config(&[]), Duration::from_secs(5)).unwrap();
        match send(&outbound, "http://localhost:1/").await {
            Err(OutboundError::Refused(Refused::Address { host, class: Class::Loopback, .. })) => {
                assert_eq!(host, "localhost")
            }
            other => panic!("localhost was not refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn network_failures_say_why_and_may_be_retried() {
        // a port nothing listens on, reached through the allow list
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let outbound = Outbound::new(&config(&["127.0.0.1"]), Duration::from_secs(5)).unwrap();
        match send(&outbound, &format!("http://{closed}/")).await {
            Err(e @ OutboundError::Http(_)) => {
                assert!(!e.is_permanent());
                assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A listed local server that redirects to the cloud metadata address: the hop is
    /// refused before any connection to it.
    #[tokio::test]
    async fn redirect_hops_are_checked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let answer =
                    "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest\r\ncontent-length: 0\r\n\r\n";
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        let outbound = Outbound::new(&config(&[&addr.to_string()]), Duration::from_secs(5)).unwrap();
        match send(&outbound, &format!("http://{addr}/")).await {
            Err(OutboundError::Refused(Refused::Address { class: Class::LinkLocal, .. })) => {}
            other => panic!("the redirect was followed: {other:?}"),
        }
    }

    #[tokio::test]
    async fn bodies_are_capped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                // chunked, so the length is not known in advance
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                for _ in 0..3 {
                    let _ = socket.write_all(b"400\r\n").await;
                    let _ = socket.write_all(&[b'x'; 0x400]).await;
                    let _ = socket.write_all(b"\r\n").await;
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            }
        });
        let outbound = Outbound::new(&config(&["127.0.0.1"]), Duration::from_secs(5)).unwrap();
        let url = format!("http://{addr}/");
        let body = read_capped(send(&outbound, &url).await.unwrap(), 3 * 1024).await.unwrap();
        assert_eq!(body.len(), 3 * 1024);
        let over = read_capped(send(&outbound, &url).await.unwrap(), 3 * 1024 - 1).await;
        assert!(matches!(over, Err(OutboundError::TooLarge(_))), "{over:?}");
    }
}
