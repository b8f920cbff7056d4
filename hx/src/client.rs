//! A small REST client of the gateway, for the CLI.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct GatewayClient {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl GatewayClient {
    pub fn new(base: &str, key: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), key, http })
    }

    /// Sends a request and decodes a JSON answer; an error answer becomes an error that
    /// quotes the server's code and message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<T> {
        let (status, text) = self.send(method, path, query, body).await?;
        if !status.is_success() {
            let detail: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = detail["error"]["code"].as_str().unwrap_or("http_error");
            let message = detail["error"]["message"].as_str().unwrap_or(text.as_str());
            if status == StatusCode::UNAUTHORIZED {
                bail!(
                    "{message} ({code}); set HELIX_API_KEY or --api-key, or run on the gateway's machine (HELIX_HOME/admin.key)"
                );
            }
            bail!("{message} ({code}, HTTP {})", status.as_u16());
        }
        serde_json::from_str(&text).with_context(|| format!("the gateway answered {path} with unexpected JSON"))
    }

    /// Sends a request and returns the status and body, whatever the status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = response.status();
        Ok((status, response.text().await?))
    }
}
