//! Config reloads: validate, diff by provider id, apply only the diff (SPEC §10).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{chat, config, drain};
use switchyard_core::testing::{ScriptedProvider, Step};
use switchyard_core::{
    ConfigError, EventKind, Health, ManagerError, Provider, ProviderConfig, ProviderFactory,
    ProviderManager, RequestType, RouteConfig,
};

/// Builds scripted providers replying with their id and the config's weight.
#[derive(Default)]
struct Factory {
    built: AtomicUsize,
}

impl ProviderFactory for Factory {
    fn create(&self, config: &ProviderConfig) -> Result<Arc<dyn Provider>, ConfigError> {
        if config.kind == "broken" {
            return Err(ConfigError::single(
                "type",
                "cannot build a 'broken' provider",
            ));
        }
        self.built.fetch_add(1, Ordering::SeqCst);
        let provider = ScriptedProvider::new(format!("{} w{}", config.id, config.weight));
        provider.always(Step::slow(Duration::from_millis(100)));
        Ok(Arc::new(provider))
    }
}

fn manager(factory: Arc<Factory>, providers: Vec<ProviderConfig>) -> ProviderManager {
    let mut builder = ProviderManager::builder().factory_arc(factory);
    for p in providers {
        builder = builder.provider(p);
    }
    builder.build().unwrap()
}

async fn reply(manager: &ProviderManager, model: &str) -> String {
    let handle = manager
        .get_best_provider_for_request(model, RequestType::Chat)
        .unwrap();
    let response = handle
        .chat(chat(model), &manager.call_context(model))
        .await
        .unwrap();
    response.choices[0].message.text_content().unwrap()
}

#[tokio::test(start_paused = true)]
async fn only_the_diff_is_applied_and_state_survives() {
    let factory = Arc::new(Factory::default());
    let manager = manager(
        Arc::clone(&factory),
        vec![
            config("a", &["m"]),
            config("b", &["m"]),
            config("c", &["n"]),
        ],
    );
    assert_eq!(factory.built.load(Ordering::SeqCst), 3);
    manager
        .deployment_state("a", "m")
        .unwrap()
        .set_health(Health::Degraded);
    let a_state = manager.deployment_state("a", "m").unwrap();
    let mut events = manager.events().subscribe();

    let mut b = config("b", &["m"]);
    b.weight = 5;
    let d = config("d", &["n"]);
    let diff = manager
        .apply_config(vec![config("a", &["m"]), b, d], BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(
        (diff.added, diff.changed, diff.removed),
        (
            vec!["d".to_owned()],
            vec!["b".to_owned()],
            vec!["c".to_owned()]
        )
    );
    assert_eq!(
        factory.built.load(Ordering::SeqCst),
        5,
        "only b (changed) and d (added) were rebuilt"
    );
    assert!(
        Arc::ptr_eq(&a_state, &manager.deployment_state("a", "m").unwrap()),
        "a untouched"
    );
    assert_eq!(a_state.health(), Health::Degraded);
    assert_eq!(manager.provider_ids(), ["a", "b", "d"]);
    let names: Vec<_> = drain(&mut events).iter().map(|e| e.kind.name()).collect();
    assert_eq!(names.first(), Some(&"provider_state_changed"));
    assert!(names.contains(&"provider_removed") && names.contains(&"provider_updated"));
    assert!(names.contains(&"provider_added"));
    assert_eq!(names.last(), Some(&"config_reloaded"));
    assert_eq!(reply(&manager, "n").await, "d w1");
}

#[tokio::test(start_paused = true)]
async fn calls_in_flight_finish_on_the_config_they_started_with() {
    let factory = Arc::new(Factory::default());
    let manager = manager(Arc::clone(&factory), vec![config("a", &["m"])]);
    let handle = manager
        .get_best_provider_for_request("m", RequestType::Chat)
        .unwrap();
    let ctx = manager.call_context("m");
    let in_flight = tokio::spawn(async move { handle.chat(chat("m"), &ctx).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut a = config("a", &["m"]);
    a.weight = 9;
    manager
        .apply_config(vec![a], BTreeMap::new())
        .await
        .unwrap();
    let old = in_flight.await.unwrap();
    assert_eq!(old.choices[0].message.text_content().unwrap(), "a w1");
    assert_eq!(reply(&manager, "m").await, "a w9");
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_changes_nothing_and_is_reported() {
    let factory = Arc::new(Factory::default());
    let manager = manager(Arc::clone(&factory), vec![config("a", &["m"])]);
    let mut events = manager.events().subscribe();
    let routes = BTreeMap::from([(
        "m".to_owned(),
        RouteConfig {
            fallbacks: vec!["ghost".into()],
            ..RouteConfig::default()
        },
    )]);
    let err = manager
        .apply_config(vec![config("a", &["m"]), config("a", &["m"])], routes)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("providers[1].id: duplicate provider id 'a'"),
        "{text}"
    );
    assert!(
        text.contains("routes.\"m\".fallbacks: no provider serves fallback model 'ghost'"),
        "{text}"
    );
    let mut broken = config("z", &["m"]);
    broken.kind = "broken".into();
    let err = manager
        .apply_config(vec![config("b", &["m"]), broken], BTreeMap::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ManagerError::Config(e) if e.issues[0].path == "providers[1].type"),
        "{err}"
    );
    assert_eq!(
        manager.provider_ids(),
        ["a"],
        "the old config keeps serving"
    );
    assert_eq!(
        factory.built.load(Ordering::SeqCst),
        2,
        "b was built but never went live"
    );
    let failed: Vec<_> = drain(&mut events)
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::ConfigReloadFailed { .. }))
        .collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(reply(&manager, "m").await, "a w1");
}

#[tokio::test(start_paused = true)]
async fn a_changed_upstream_starts_with_fresh_state_and_routes_apply() {
    let factory = Arc::new(Factory::default());
    let manager = manager(
        Arc::clone(&factory),
        vec![config("a", &["m"]), config("b", &["fb"])],
    );
    manager
        .deployment_state("a", "m")
        .unwrap()
        .set_health(Health::Degraded);
    let mut moved = config("a", &["m"]);
    moved.base_url = Some("http://127.0.0.1:9/v1".into());
    let routes = BTreeMap::from([(
        "m".to_owned(),
        RouteConfig {
            fallbacks: vec!["fb".into()],
            ..RouteConfig::default()
        },
    )]);
    let diff = manager
        .apply_config(vec![moved, config("b", &["fb"])], routes)
        .await
        .unwrap();
    assert!(diff.routes_changed);
    assert_eq!(
        manager.deployment_state("a", "m").unwrap().health(),
        Health::Healthy
    );
    assert_eq!(manager.route("m").unwrap().fallbacks, ["fb"]);
}
