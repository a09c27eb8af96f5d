//! OpenAI wire types the adapters read: the models list.
//!
//! Chat, embeddings and completions bodies are core's vendor-neutral types
//! (they are the OpenAI shape, open at the edges); errors are read by
//! [`super::ErrorFields`].

use serde::Deserialize;
use serde_json::Value;
use switchyard_core::ModelInfo;

/// `GET /models`: `{"object": "list", "data": [...]}`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ModelList {
    /// The entries, read leniently.
    #[serde(default)]
    pub data: Vec<Value>,
}

impl ModelList {
    /// The entries that carry an `id`.
    pub fn into_models(self, owned_by: &str) -> Vec<ModelInfo> {
        self.data
            .into_iter()
            .filter_map(|entry| {
                let id = entry.get("id")?.as_str()?.to_owned();
                Some(ModelInfo {
                    id,
                    object: "model".to_owned(),
                    created: entry.get("created").and_then(Value::as_u64).unwrap_or(0),
                    owned_by: entry
                        .get("owned_by")
                        .and_then(Value::as_str)
                        .unwrap_or(owned_by)
                        .to_owned(),
                })
            })
            .collect()
    }
}
