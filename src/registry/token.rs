//! The authorization flow: a 401's `WWW-Authenticate` challenge is learned once per registry,
//! then each scope gets its header — Basic credentials, or a bearer token fetched from the
//! challenge's realm and cached until it expires.
//!
//! Invariant: Basic credentials go to a token realm only over HTTPS (or on loopback) when the
//! registry itself is HTTPS.

use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::Response;
use url::Url;

use super::auth::{self, Challenge, Credentials, TokenResponse};
use super::client::{is_loopback, Registry};
use super::error::{RegistryError, Result};
use super::transport::{backoff, error_body, header_text, read_limited};

/// Largest token endpoint answer accepted.
const MAX_TOKEN_BYTES: u64 = 1 << 20;

impl Registry {
    /// Take in a 401's challenge. Returns whether a retry can succeed.
    pub(super) fn learn_challenge(&self, scope: &str, resp: &Response) -> Result<bool> {
        let value = header_text(resp, WWW_AUTHENTICATE.as_str()).unwrap_or_default();
        let Some(challenge) = auth::parse_challenge(&value) else {
            return Err(RegistryError::Auth {
                registry: self.name.clone(),
                reason: format!("HTTP 401 with an unusable WWW-Authenticate {value:?}"),
            });
        };
        let mut state = self.auth.lock();
        let had_token = state.token(scope).is_some();
        state.drop_token(scope);
        let retry = match &challenge {
            Challenge::Basic => self.credentials.is_some() && state.challenge != Some(Challenge::Basic),
            Challenge::Bearer { .. } => true,
        };
        tracing::debug!(registry = %self.name, ?challenge, had_token, "registry asked for authentication");
        state.challenge = Some(challenge);
        Ok(retry)
    }

    /// The Authorization header for `scope`, fetching a token when needed.
    pub(super) async fn auth_header(&self, scope: &str) -> Result<Option<String>> {
        let (challenge, token) = {
            let state = self.auth.lock();
            (state.challenge.clone(), state.token(scope))
        };
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials.as_ref().map(Credentials::basic_header)),
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(t) = token {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let t = self.fetch_token(&realm, service.as_deref(), scope).await?;
                Ok(Some(format!("Bearer {t}")))
            }
        }
    }

    /// Ask the token endpoint named by the challenge for a token for `scope`.
    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        let auth_err = |reason: String| RegistryError::Auth {
            registry: self.name.clone(),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|e| auth_err(format!("bad token realm {realm:?}: {e}")))?;
        if url.scheme() != "https" && !is_loopback(url.host_str().unwrap_or_default()) && self.base.scheme() == "https"
        {
            return Err(auth_err(format!(
                "token realm {realm} is not HTTPS; refusing to send credentials"
            )));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            // Several scopes (a cross-repository mount) go as several parameters.
            for one in scope.split(' ') {
                q.append_pair("scope", one);
            }
        }
        // An identity token is exchanged with OAuth2's refresh-token grant (a POST, as docker
        // does); a user name and password go as Basic credentials on a GET.
        let form = self.credentials.as_ref().filter(|c| c.is_identity_token()).map(|c| {
            let mut f = url::form_urlencoded::Serializer::new(String::new());
            f.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", &c.password)
                .append_pair("client_id", "lamina");
            if let Some(s) = service {
                f.append_pair("service", s);
            }
            f.append_pair("scope", scope);
            f.finish()
        });
        if form.is_some() {
            url.set_query(None);
        }
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let mut req = match &form {
                Some(body) => self
                    .http()
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body.clone()),
                None => self.http().get(url.clone()),
            };
            if let Some(c) = self.credentials.as_ref().filter(|c| !c.is_identity_token()) {
                req = req.header(AUTHORIZATION, c.basic_header());
            }
            match req.send().await {
                Ok(r) if r.status().is_server_error() && attempt < self.max_attempts => {}
                Ok(r) => break r,
                Err(error) if attempt >= self.max_attempts => {
                    return Err(RegistryError::Transport {
                        method: "GET".into(),
                        url: url.to_string(),
                        error,
                    })
                }
                Err(_) => {}
            }
            tokio::time::sleep(backoff(attempt)).await;
        };
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = error_body(resp).await;
            return Err(auth_err(format!("token endpoint {url} answered HTTP {status}: {body}")));
        }
        let body = read_limited(resp, MAX_TOKEN_BYTES, &url, "token response").await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| auth_err(format!("token endpoint {url}: bad JSON: {e}")))?;
        self.auth
            .lock()
            .store_token(scope, parsed)
            .ok_or_else(|| auth_err(format!("token endpoint {url} gave no token")))
    }
}
