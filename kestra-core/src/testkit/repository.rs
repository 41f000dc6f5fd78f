//! Conformance suite for the repository seam: one public async function per concern of
//! [`crate::repository`] (flows, executions, logs, metrics, triggers, service instances), each taking
//! the backend's [`Repositories`] and panicking with a clear message on any violation. [`run_all`] runs
//! everything.
//!
//! Every function works in a fresh tenant (`tk-<check>-<id>`) or with fresh ids, so it passes on an empty
//! store and on a shared one; the functions may even run concurrently. Dates are fixed and distinct so
//! that sorts are deterministic. (Trigger claims belong to the queue backend: see the `triggers`
//! suite.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fmt::Debug;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::model::{
    Execution, Label, Level, LogEntry, MetricEntry, MetricType, ServiceInstance, ServiceState,
    ServiceType, State, StateType, TriggerState, new_id,
};
use crate::repository::{
    ExecutionQuery, FlowQuery, FlowRecord, LogQuery, Page, Pageable, PurgeCount, RepoResult,
    Repositories, RepositoryError, SaveOutcome, TriggerQuery,
};

// ---------------------------------------------------------------------------------------------------
// helpers

fn tenant(check: &str) -> String {
    format!("tk-{check}-{}", new_id())
}

/// 2026-01-01T00:00:00Z plus `secs`.
fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600 + secs, 0).expect("fixed dates are in range")
}

const HOUR: i64 = 3_600;

fn ok<T>(r: RepoResult<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn assert_invalid_sort<T: Debug>(r: RepoResult<T>, what: &str) {
    assert!(
        matches!(r, Err(RepositoryError::InvalidSort { .. })),
        "{what}: expected RepositoryError::InvalidSort, got {r:?}"
    );
}

fn assert_invalid_query<T: Debug>(r: RepoResult<T>, what: &str) {
    assert!(
        matches!(r, Err(RepositoryError::InvalidQuery(_))),
        "{what}: expected RepositoryError::InvalidQuery, got {r:?}"
    );
}

fn sorted<T: Ord>(v: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = v.into_iter().collect();
    v.sort();
    v
}

/// An execution of `tenant` started at `start` and moved to `state` (RUNNING at +1 s, terminal at
/// +10 s), without labels.
fn execution(
    tenant: &str,
    namespace: &str,
    flow_id: &str,
    start: DateTime<Utc>,
    state: StateType,
) -> Execution {
    let mut e = Execution::new(namespace, flow_id, 1);
    e.tenant_id = tenant.to_string();
    e.labels.clear();
    e.metadata.original_created_date = start;
    e.state = State::new_at(StateType::Created, start);
    if state != StateType::Created {
        e.state
            .transition_at(StateType::Running, start + chrono::Duration::seconds(1))
            .expect("CREATED -> RUNNING");
        if state != StateType::Running {
            e.state
                .transition_at(state, start + chrono::Duration::seconds(10))
                .expect("RUNNING -> terminal state");
        }
    }
    e
}

fn flow(
    tenant: &str,
    namespace: &str,
    id: &str,
    description: &str,
    message: &str,
    labels: &[(&str, &str)],
) -> FlowRecord {
    let source = format!(
        "id: {id}\nnamespace: {namespace}\ndescription: {description}\ntasks:\n  - id: hello\n    \
         type: io.kestra.plugin.core.log.Log\n    message: {message}\n"
    );
    FlowRecord {
        tenant_id: tenant.to_string(),
        namespace: namespace.to_string(),
        id: id.to_string(),
        revision: 0,
        flow: json!({
            "id": id,
            "namespace": namespace,
            "description": description,
            "tasks": [{"id": "hello", "type": "io.kestra.plugin.core.log.Log", "message": message}],
        }),
        source,
        labels: labels.iter().map(|(k, v)| Label::new(*k, *v)).collect(),
        disabled: false,
        deleted: false,
        updated: t(0),
    }
}

fn flow_ids(page: &Page<FlowRecord>) -> Vec<String> {
    page.results.iter().map(|f| f.id.clone()).collect()
}

fn exec_ids(page: &Page<Execution>) -> Vec<String> {
    page.results.iter().map(|e| e.id.clone()).collect()
}

fn ids_of(execs: &[&Execution]) -> Vec<String> {
    execs.iter().map(|e| e.id.clone()).collect()
}

// ---------------------------------------------------------------------------------------------------
// flows

/// Flow revisions: the first save creates revision 1; the same source again is `Unchanged` with the same
/// revision; a changed source is revision 2; lookups by latest and by revision; the revision list;
/// deletion is soft (lookups miss it, history stays, with the deletion recorded as a revision); saving
/// after a deletion stores the next revision; deleting an absent flow is `NotFound`.
pub async fn flow_revisions(repos: &Repositories) {
    let flows = &*repos.flows;
    let tn = tenant("flow-revisions");
    let (ns, id) = ("company.team", "revised");
    let v1 = flow(&tn, ns, id, "first", "v1", &[]);
    let (saved, outcome) = ok(flows.save(v1.clone()).await, "save of a new flow");
    assert_eq!(outcome, SaveOutcome::Created, "first save");
    assert_eq!(saved.revision, 1, "first save is revision 1");
    assert_eq!(
        (&saved.tenant_id, &saved.namespace, &saved.id, &saved.source),
        (&tn, &v1.namespace, &v1.id, &v1.source)
    );
    assert!(!saved.deleted);

    let (again, outcome) = ok(flows.save(v1.clone()).await, "save of the same source");
    assert_eq!(outcome, SaveOutcome::Unchanged, "same source again");
    assert_eq!(again.revision, 1, "an unchanged save keeps the revision");

    let v2 = flow(&tn, ns, id, "second", "v2", &[]);
    let (saved2, outcome) = ok(flows.save(v2.clone()).await, "save of a changed source");
    assert_eq!(outcome, SaveOutcome::Updated, "changed source");
    assert_eq!(saved2.revision, 2, "a changed source is revision 2");

    let latest = ok(flows.find(&tn, ns, id, None).await, "find latest");
    let latest = latest.expect("the saved flow is found");
    assert_eq!(
        (latest.revision, &latest.source),
        (2, &v2.source),
        "latest revision"
    );
    let first = ok(flows.find(&tn, ns, id, Some(1)).await, "find revision 1");
    assert_eq!(
        first.map(|f| (f.revision, f.source)),
        Some((1, v1.source.clone())),
        "revision 1 keeps its source"
    );
    assert_eq!(
        ok(flows.find(&tn, ns, id, Some(3)).await, "find revision 3"),
        None,
        "a revision that does not exist"
    );
    assert_eq!(
        ok(
            flows.find("tk-other-tenant", ns, id, None).await,
            "find in another tenant"
        ),
        None,
        "flows are per tenant"
    );
    let revs = ok(flows.revisions(&tn, ns, id).await, "revisions");
    assert_eq!(
        revs.iter()
            .map(|f| (f.revision, f.source.clone()))
            .collect::<Vec<_>>(),
        vec![(1, v1.source.clone()), (2, v2.source.clone())],
        "revisions, oldest first"
    );

    let deleted = ok(flows.delete(&tn, ns, id).await, "delete");
    assert!(deleted.deleted, "delete returns the deletion record");
    assert_eq!(
        deleted.revision, 3,
        "the deletion is recorded as revision 3"
    );
    assert_eq!(
        ok(flows.find(&tn, ns, id, None).await, "find after delete"),
        None,
        "a deleted flow is not found"
    );
    let revs = ok(flows.revisions(&tn, ns, id).await, "revisions after delete");
    assert_eq!(
        revs.iter()
            .map(|f| (f.revision, f.deleted))
            .collect::<Vec<_>>(),
        vec![(1, false), (2, false), (3, true)],
        "history stays, with the deletion"
    );

    // Saving the very source of the deleted revision again must restore the flow.
    let (restored, outcome) = ok(flows.save(v2.clone()).await, "save after delete");
    assert_ne!(
        outcome,
        SaveOutcome::Unchanged,
        "saving after a deletion stores a new revision even with the same source"
    );
    assert_eq!(
        restored.revision, 4,
        "save after delete is the next revision"
    );
    let latest = ok(flows.find(&tn, ns, id, None).await, "find after restore");
    assert_eq!(latest.map(|f| (f.revision, f.deleted)), Some((4, false)));

    let missing = flows.delete(&tn, ns, "never-saved").await;
    assert!(
        matches!(missing, Err(RepositoryError::NotFound { .. })),
        "delete of an absent flow: expected NotFound, got {missing:?}"
    );
}

/// Flow search: text (`q` on id, namespace, description and source, case-insensitive), namespace with
/// children (segment-wise: `company` matches `company.team`, not `companyx`), labels (all must match),
/// pagination totals, sort allow-list, and that deleted flows are invisible; `find_all` and
/// `distinct_namespaces`.
pub async fn flow_search(repos: &Repositories) {
    let flows = &*repos.flows;
    let tn = tenant("flow-search");
    let records = [
        flow(
            &tn,
            "company",
            "alpha",
            "Sends the Weekly report",
            "hello",
            &[("env", "prod"), ("team", "data")],
        ),
        flow(
            &tn,
            "company.team",
            "beta",
            "Team flow",
            "zebra crossing",
            &[("env", "prod")],
        ),
        flow(&tn, "companyx", "gamma", "X flow", "hi", &[("env", "dev")]),
        flow(
            &tn,
            "other.ns",
            "delta",
            "Another flow",
            "hey",
            &[("env", "prod")],
        ),
        flow(
            &tn,
            "deleted.only",
            "zeta",
            "Gone",
            "bye",
            &[("env", "prod")],
        ),
    ];
    for r in &records {
        ok(flows.save(r.clone()).await, "save flow");
    }
    ok(
        flows.delete(&tn, "deleted.only", "zeta").await,
        "delete flow",
    );

    let q = |f: fn(&mut FlowQuery)| {
        let mut query = FlowQuery {
            tenant_id: Some(tn.clone()),
            ..FlowQuery::default()
        };
        f(&mut query);
        query
    };
    let by_id = Pageable::new(1, 25).sorted("id", false);
    let cases: Vec<(&str, FlowQuery, Vec<&str>)> = vec![
        (
            "no filter (tenant only)",
            q(|_| {}),
            vec!["alpha", "beta", "delta", "gamma"],
        ),
        (
            "q on description, case-insensitive",
            q(|q| q.q = Some("WEEKLY".into())),
            vec!["alpha"],
        ),
        (
            "q on source only",
            q(|q| q.q = Some("ZeBrA".into())),
            vec!["beta"],
        ),
        ("q on id", q(|q| q.q = Some("gam".into())), vec!["gamma"]),
        (
            "q on namespace",
            q(|q| q.q = Some("her.ns".into())),
            vec!["delta"],
        ),
        (
            "namespace with children, segment-wise",
            q(|q| q.namespace = Some("company".into())),
            vec!["alpha", "beta"],
        ),
        (
            "namespace leaf",
            q(|q| q.namespace = Some("company.team".into())),
            vec!["beta"],
        ),
        (
            "one label",
            q(|q| q.labels = vec![Label::new("env", "prod")]),
            vec!["alpha", "beta", "delta"],
        ),
        (
            "all labels must match",
            q(|q| q.labels = vec![Label::new("env", "prod"), Label::new("team", "data")]),
            vec!["alpha"],
        ),
        (
            "criteria are ANDed",
            q(|q| {
                q.namespace = Some("company".into());
                q.labels = vec![Label::new("env", "prod")];
                q.q = Some("team".into());
            }),
            vec!["beta"],
        ),
        (
            "deleted flows are invisible",
            q(|q| q.q = Some("zeta".into())),
            vec![],
        ),
    ];
    for (what, query, expected) in cases {
        let page = ok(flows.search(&query, &by_id).await, what);
        assert_eq!(flow_ids(&page), expected, "flow search: {what}");
        assert_eq!(
            page.total,
            expected.len() as u64,
            "flow search total: {what}"
        );
    }
    let other_tenant = FlowQuery {
        tenant_id: Some(tenant("flow-search-empty")),
        ..FlowQuery::default()
    };
    assert_eq!(
        ok(
            flows.search(&other_tenant, &by_id).await,
            "search other tenant"
        )
        .total,
        0,
        "flows are per tenant"
    );

    let all = q(|_| {});
    let p1 = ok(
        flows
            .search(&all, &Pageable::new(1, 3).sorted("id", false))
            .await,
        "page 1",
    );
    assert_eq!(flow_ids(&p1), vec!["alpha", "beta", "delta"], "page 1 of 3");
    assert_eq!(p1.total, 4, "total counts all matches");
    let p2 = ok(
        flows
            .search(&all, &Pageable::new(2, 3).sorted("id", false))
            .await,
        "page 2",
    );
    assert_eq!(flow_ids(&p2), vec!["gamma"], "page 2 of 3");
    assert_eq!(p2.total, 4, "total counts all matches on every page");
    let desc = ok(
        flows
            .search(&all, &Pageable::new(1, 25).sorted("id", true))
            .await,
        "sort id desc",
    );
    assert_eq!(flow_ids(&desc), vec!["gamma", "delta", "beta", "alpha"]);
    let by_ns = ok(
        flows
            .search(&all, &Pageable::new(1, 25).sorted("namespace", false))
            .await,
        "sort namespace",
    );
    assert_eq!(
        by_ns
            .results
            .iter()
            .map(|f| f.namespace.as_str())
            .collect::<Vec<_>>(),
        vec!["company", "company.team", "companyx", "other.ns"]
    );
    assert_invalid_sort(
        flows
            .search(&all, &Pageable::new(1, 25).sorted("nope", false))
            .await,
        "flow sort on `nope`",
    );
    assert_invalid_query(
        flows.search(&all, &Pageable::new(0, 25)).await,
        "flow page 0",
    );
    assert_invalid_query(
        flows.search(&all, &Pageable::new(1, 0)).await,
        "flow size 0",
    );

    let found = ok(flows.find_all(&tn).await, "find_all");
    assert_eq!(
        sorted(found.iter().map(|f| f.id.clone())),
        vec!["alpha", "beta", "delta", "gamma"],
        "find_all: latest revision of every non-deleted flow"
    );
    assert!(found.iter().all(|f| f.revision == 1 && !f.deleted));
    assert_eq!(
        ok(flows.distinct_namespaces(&tn).await, "distinct_namespaces"),
        vec!["company", "company.team", "companyx", "other.ns"],
        "distinct namespaces of non-deleted flows, sorted"
    );
}

// ---------------------------------------------------------------------------------------------------
// executions

/// Five executions of one tenant, started one hour apart (ids increasing with start date).
struct ExecutionSet {
    tenant: String,
    e: [Execution; 5],
}

async fn execution_set(repos: &Repositories, check: &str) -> ExecutionSet {
    let tn = tenant(check);
    let mut e1 = execution(&tn, "company.team", "flow-one", t(0), StateType::Success);
    e1.labels = vec![Label::new("env", "prod")];
    let mut e2 = execution(&tn, "company.team", "flow-one", t(HOUR), StateType::Failed);
    e2.labels = vec![Label::new("env", "prod"), Label::new("team", "data-team")];
    let mut e3 = execution(&tn, "company", "flow-one", t(2 * HOUR), StateType::Running);
    e3.labels = vec![Label::new("env", "dev")];
    let e4 = execution(&tn, "companyx", "flow-two", t(3 * HOUR), StateType::Success);
    let mut e5 = execution(&tn, "other-ns", "flow-two", t(4 * HOUR), StateType::Created);
    e5.parent_id = Some(e1.id.clone());
    let set = ExecutionSet {
        tenant: tn,
        e: [e1, e2, e3, e4, e5],
    };
    for e in &set.e {
        ok(repos.executions.save(e).await, "save execution");
    }
    set
}

/// `find_by_ids`: the executions of the ids asked that exist in the tenant, as `find_by_id`
/// reads each (any order); unknown ids, other tenants' and soft-deleted executions are left out;
/// no ids, no executions; more ids than one request of a backend takes (1,200) all answered.
pub async fn execution_find_by_ids(repos: &Repositories) {
    let execs = &*repos.executions;
    let set = execution_set(repos, "execution-find-by-ids").await;
    let [e1, e2, e3, e4, e5] = &set.e;
    let sorted = |mut v: Vec<Execution>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let ids = vec![
        e4.id.clone(),
        "no-such-execution".to_string(),
        e1.id.clone(),
        e3.id.clone(),
    ];
    assert_eq!(
        sorted(ok(
            execs.find_by_ids(&set.tenant, &ids).await,
            "find_by_ids"
        )),
        sorted(vec![e1.clone(), e3.clone(), e4.clone()]),
        "the executions asked for that exist, exactly as saved"
    );
    assert_eq!(
        ok(
            execs.find_by_ids(&set.tenant, &[]).await,
            "find_by_ids none"
        ),
        Vec::<Execution>::new(),
        "no ids, no executions"
    );
    assert_eq!(
        ok(
            execs
                .find_by_ids("tk-other-tenant", &[e1.id.clone(), e2.id.clone()])
                .await,
            "find_by_ids other tenant"
        ),
        Vec::<Execution>::new(),
        "executions are per tenant"
    );
    ok(execs.delete(&set.tenant, &e2.id).await, "delete execution");
    let found = ok(
        execs
            .find_by_ids(&set.tenant, &[e2.id.clone(), e5.id.clone()])
            .await,
        "find_by_ids deleted",
    );
    assert_eq!(
        found,
        vec![e5.clone()],
        "a soft-deleted execution is left out"
    );
    // Many ids: every known one is found, whatever the backend's request size.
    let mut many: Vec<String> = (0..1_200).map(|i| format!("tk-missing-{i}")).collect();
    many.insert(600, e1.id.clone());
    many.push(e5.id.clone());
    assert_eq!(
        sorted(ok(
            execs.find_by_ids(&set.tenant, &many).await,
            "find_by_ids many"
        )),
        sorted(vec![e1.clone(), e5.clone()]),
        "1,202 ids, two known"
    );
}

/// A search's page and its total come from one snapshot: while another task keeps saving new
/// executions, every search whose page is not full reports exactly as many results as its total.
pub async fn execution_search_page_agrees_with_total(repos: &Repositories) {
    let tn = tenant("execution-snapshot");
    let writer = {
        let executions = repos.executions.clone();
        let tn = tn.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                let e = execution(&tn, "company", "busy", t(i), StateType::Success);
                ok(executions.save(&e).await, "save execution");
            }
        })
    };
    let query = ExecutionQuery {
        tenant_id: Some(tn.clone()),
        ..Default::default()
    };
    let mut searches = 0;
    while !writer.is_finished() || searches < 20 {
        let page = ok(
            repos
                .executions
                .search(&query, &Pageable::new(1, 1_000))
                .await,
            "search executions",
        );
        assert_eq!(
            page.total,
            page.results.len() as u64,
            "a page holding every result must agree with its total (search {searches})"
        );
        searches += 1;
    }
    match writer.await {
        Ok(()) => {}
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("writer failed: {e}"),
    }
}

/// Executions: save and `find_by_id` (exact round trip, per tenant), and search by namespace (with
/// children), flow id (exact), states (any of), start date range (inclusive), labels (all), `q` (id,
/// namespace, flow id, label values; case-insensitive) and parent id, ANDed.
pub async fn execution_search(repos: &Repositories) {
    let execs = &*repos.executions;
    let set = execution_set(repos, "execution-search").await;
    let [e1, e2, e3, e4, e5] = &set.e;
    for e in &set.e {
        assert_eq!(
            ok(execs.find_by_id(&set.tenant, &e.id).await, "find_by_id").as_ref(),
            Some(e),
            "an execution reads back exactly as saved"
        );
    }
    assert_eq!(
        ok(
            execs.find_by_id("tk-other-tenant", &e1.id).await,
            "find_by_id other tenant"
        ),
        None,
        "executions are per tenant"
    );
    assert_eq!(
        ok(
            execs.find_by_id(&set.tenant, "no-such-execution").await,
            "find_by_id absent"
        ),
        None
    );

    let tn = set.tenant.clone();
    let q = |f: &dyn Fn(&mut ExecutionQuery)| {
        let mut query = ExecutionQuery {
            tenant_id: Some(tn.clone()),
            ..ExecutionQuery::default()
        };
        f(&mut query);
        query
    };
    let e3_id = e3.id.clone();
    let e1_id = e1.id.clone();
    let cases: Vec<(&str, ExecutionQuery, Vec<&Execution>)> = vec![
        ("tenant only", q(&|_| {}), vec![e1, e2, e3, e4, e5]),
        (
            "namespace with children",
            q(&|q| q.namespace = Some("company".into())),
            vec![e1, e2, e3],
        ),
        (
            "namespace leaf",
            q(&|q| q.namespace = Some("company.team".into())),
            vec![e1, e2],
        ),
        (
            "flow id",
            q(&|q| q.flow_id = Some("flow-two".into())),
            vec![e4, e5],
        ),
        (
            "flow id is exact",
            q(&|q| q.flow_id = Some("flow".into())),
            vec![],
        ),
        (
            "one state",
            q(&|q| q.states = vec![StateType::Success]),
            vec![e1, e4],
        ),
        (
            "any of the states",
            q(&|q| q.states = vec![StateType::Success, StateType::Failed]),
            vec![e1, e2, e4],
        ),
        (
            "start date range, inclusive",
            q(&|q| {
                q.start_date = Some(t(HOUR));
                q.end_date = Some(t(3 * HOUR));
            }),
            vec![e2, e3, e4],
        ),
        (
            "start date lower bound",
            q(&|q| q.start_date = Some(t(3 * HOUR))),
            vec![e4, e5],
        ),
        (
            "one label",
            q(&|q| q.labels = vec![Label::new("env", "prod")]),
            vec![e1, e2],
        ),
        (
            "all labels",
            q(&|q| q.labels = vec![Label::new("env", "prod"), Label::new("team", "data-team")]),
            vec![e2],
        ),
        (
            "label value must match",
            q(&|q| q.labels = vec![Label::new("env", "staging")]),
            vec![],
        ),
        (
            "q on a label value, case-insensitive",
            q(&|q| q.q = Some("DATA-TEAM".into())),
            vec![e2],
        ),
        (
            "q on namespace",
            q(&|q| q.q = Some("OTHER-NS".into())),
            vec![e5],
        ),
        (
            "q on flow id",
            q(&|q| q.q = Some("flow-two".into())),
            vec![e4, e5],
        ),
        ("q on id", q(&|q| q.q = Some(e3_id.clone())), vec![e3]),
        (
            "parent id",
            q(&|q| q.parent_id = Some(e1_id.clone())),
            vec![e5],
        ),
        (
            "criteria are ANDed",
            q(&|q| {
                q.namespace = Some("company".into());
                q.states = vec![StateType::Success, StateType::Failed];
                q.labels = vec![Label::new("env", "prod")];
            }),
            vec![e1, e2],
        ),
    ];
    let by_start = Pageable::new(1, 25).sorted("state.startDate", false);
    for (what, query, expected) in cases {
        let page = ok(execs.search(&query, &by_start).await, what);
        assert_eq!(
            exec_ids(&page),
            ids_of(&expected),
            "execution search: {what}"
        );
        assert_eq!(
            page.total,
            expected.len() as u64,
            "execution search total: {what}"
        );
    }
    let other = ExecutionQuery {
        tenant_id: Some(tenant("execution-search-empty")),
        ..ExecutionQuery::default()
    };
    assert_eq!(
        ok(execs.search(&other, &by_start).await, "search other tenant").total,
        0,
        "executions are per tenant"
    );
}

/// Execution pagination and sorting: newest first by default; `state.startDate`, `id`, `flowId`,
/// `namespace`, `state.current` (by state name) and `state.endDate` ascending and descending; several
/// sort keys; page 2 of size 2 of 5 holds 2 items with total 5; an unknown sort field is `InvalidSort`,
/// page or size 0 is `InvalidQuery`.
pub async fn execution_sort_and_pagination(repos: &Repositories) {
    let execs = &*repos.executions;
    let set = execution_set(repos, "execution-sort").await;
    let [e1, e2, e3, e4, e5] = &set.e;
    let all = ExecutionQuery {
        tenant_id: Some(set.tenant.clone()),
        ..ExecutionQuery::default()
    };
    let search = |page: Pageable| {
        let all = all.clone();
        async move { execs.search(&all, &page).await }
    };

    let default = ok(search(Pageable::new(1, 25)).await, "unsorted search");
    assert_eq!(
        exec_ids(&default),
        ids_of(&[e5, e4, e3, e2, e1]),
        "without a sort, newest first"
    );
    let asc = ok(
        search(Pageable::new(1, 25).sorted("state.startDate", false)).await,
        "sort start asc",
    );
    assert_eq!(
        exec_ids(&asc),
        ids_of(&[e1, e2, e3, e4, e5]),
        "state.startDate asc"
    );
    let desc = ok(
        search(Pageable::new(1, 25).sorted("state.startDate", true)).await,
        "sort start desc",
    );
    assert_eq!(
        exec_ids(&desc),
        ids_of(&[e5, e4, e3, e2, e1]),
        "state.startDate desc"
    );

    let mut by_id: Vec<String> = set.e.iter().map(|e| e.id.clone()).collect();
    by_id.sort();
    let got = ok(
        search(Pageable::new(1, 25).sorted("id", false)).await,
        "sort id",
    );
    assert_eq!(exec_ids(&got), by_id, "id asc");
    by_id.reverse();
    let got = ok(
        search(Pageable::new(1, 25).sorted("id", true)).await,
        "sort id desc",
    );
    assert_eq!(exec_ids(&got), by_id, "id desc");

    let field = |page: &Page<Execution>, f: fn(&Execution) -> String| -> Vec<String> {
        page.results.iter().map(f).collect()
    };
    let got = ok(
        search(Pageable::new(1, 25).sorted("flowId", false)).await,
        "sort flowId",
    );
    assert_eq!(
        field(&got, |e| e.flow_id.clone()),
        vec!["flow-one", "flow-one", "flow-one", "flow-two", "flow-two"],
        "flowId asc"
    );
    let got = ok(
        search(Pageable::new(1, 25).sorted("flowId", true)).await,
        "sort flowId desc",
    );
    assert_eq!(
        field(&got, |e| e.flow_id.clone()),
        vec!["flow-two", "flow-two", "flow-one", "flow-one", "flow-one"],
        "flowId desc"
    );
    let got = ok(
        search(Pageable::new(1, 25).sorted("namespace", false)).await,
        "sort namespace",
    );
    assert_eq!(
        field(&got, |e| e.namespace.clone()),
        vec![
            "company",
            "company.team",
            "company.team",
            "companyx",
            "other-ns"
        ],
        "namespace asc"
    );
    let got = ok(
        search(Pageable::new(1, 25).sorted("state.current", false)).await,
        "sort state.current",
    );
    assert_eq!(
        field(&got, |e| e.current().to_string()),
        vec!["CREATED", "FAILED", "RUNNING", "SUCCESS", "SUCCESS"],
        "state.current asc (by state name)"
    );
    let got = ok(
        search(Pageable::new(1, 25).sorted("state.current", true)).await,
        "sort state.current desc",
    );
    assert_eq!(
        field(&got, |e| e.current().to_string()),
        vec!["SUCCESS", "SUCCESS", "RUNNING", "FAILED", "CREATED"],
        "state.current desc (by state name)"
    );
    // End dates: only terminated executions have one (NULL ordering differs between databases).
    let ended = ExecutionQuery {
        states: vec![StateType::Success, StateType::Failed],
        ..all.clone()
    };
    let got = ok(
        execs
            .search(&ended, &Pageable::new(1, 25).sorted("state.endDate", true))
            .await,
        "sort endDate desc",
    );
    assert_eq!(exec_ids(&got), ids_of(&[e4, e2, e1]), "state.endDate desc");
    let got = ok(
        execs
            .search(&ended, &Pageable::new(1, 25).sorted("state.endDate", false))
            .await,
        "sort endDate asc",
    );
    assert_eq!(exec_ids(&got), ids_of(&[e1, e2, e4]), "state.endDate asc");
    let got = ok(
        search(
            Pageable::new(1, 25)
                .sorted("namespace", false)
                .sorted("state.startDate", true),
        )
        .await,
        "two sort keys",
    );
    assert_eq!(
        exec_ids(&got),
        ids_of(&[e3, e2, e1, e4, e5]),
        "namespace asc, then state.startDate desc"
    );

    let by_start = |page, size| Pageable::new(page, size).sorted("state.startDate", false);
    let p2 = ok(search(by_start(2, 2)).await, "page 2 of size 2");
    assert_eq!(exec_ids(&p2), ids_of(&[e3, e4]), "page 2 of size 2");
    assert_eq!(p2.total, 5, "total counts all matches");
    let p3 = ok(search(by_start(3, 2)).await, "page 3 of size 2");
    assert_eq!(exec_ids(&p3), ids_of(&[e5]), "last, partial page");
    assert_eq!(p3.total, 5);
    let p4 = ok(search(by_start(4, 2)).await, "page 4 of size 2");
    assert!(p4.results.is_empty(), "a page past the end is empty");
    assert_eq!(p4.total, 5, "total is still reported past the end");

    assert_invalid_sort(
        search(Pageable::new(1, 25).sorted("nope", false)).await,
        "execution sort on `nope`",
    );
    assert_invalid_sort(
        search(Pageable::new(1, 25).sorted("id; DROP TABLE executions", false)).await,
        "execution sort on an injection attempt",
    );
    assert_invalid_query(search(Pageable::new(0, 2)).await, "execution page 0");
    assert_invalid_query(search(Pageable::new(1, 0)).await, "execution size 0");
}

#[allow(clippy::too_many_arguments)]
fn log_line(
    tenant: &str,
    namespace: &str,
    flow_id: &str,
    execution_id: &str,
    task_run_id: &str,
    secs: i64,
    level: Level,
    message: &str,
) -> LogEntry {
    LogEntry {
        id: new_id(),
        tenant_id: tenant.to_string(),
        namespace: namespace.to_string(),
        flow_id: flow_id.to_string(),
        task_id: Some("task".to_string()),
        execution_id: Some(execution_id.to_string()),
        task_run_id: Some(task_run_id.to_string()),
        attempt_number: Some(0),
        trigger_id: None,
        timestamp: t(secs),
        level,
        thread: None,
        message: message.to_string(),
    }
}

fn metric(
    tenant: &str,
    execution_id: &str,
    secs: i64,
    name: &str,
    type_: MetricType,
    value: f64,
) -> MetricEntry {
    MetricEntry {
        id: new_id(),
        tenant_id: tenant.to_string(),
        namespace: "company.team".to_string(),
        flow_id: "flow-one".to_string(),
        task_id: Some("task".to_string()),
        execution_id: execution_id.to_string(),
        task_run_id: Some("taskrun".to_string()),
        name: name.to_string(),
        type_,
        value,
        tags: [("k".to_string(), name.to_string())].into_iter().collect(),
        timestamp: t(secs),
    }
}

/// Executions: saving again replaces (upsert); soft delete hides an execution from lookups and search
/// but keeps its logs and metrics; purge removes an execution with its logs and metrics and returns the
/// counts, leaving other executions' logs and metrics alone.
pub async fn execution_delete_and_purge(repos: &Repositories) {
    let execs = &*repos.executions;
    let tn = tenant("execution-purge");
    let mut e1 = execution(&tn, "company.team", "flow-one", t(0), StateType::Success);
    let e2 = execution(&tn, "company.team", "flow-one", t(HOUR), StateType::Failed);
    for e in [&e1, &e2] {
        ok(execs.save(e).await, "save execution");
    }
    e1.labels = vec![Label::new("replaced", "yes")];
    ok(execs.save(&e1).await, "save execution again");
    assert_eq!(
        ok(execs.find_by_id(&tn, &e1.id).await, "find_by_id").as_ref(),
        Some(&e1),
        "saving again replaces the execution"
    );

    let mut logs = Vec::new();
    for (i, e) in [&e1, &e1, &e1, &e2].into_iter().enumerate() {
        logs.push(log_line(
            &tn,
            "company.team",
            "flow-one",
            &e.id,
            "taskrun",
            i as i64,
            Level::Info,
            "line",
        ));
    }
    ok(repos.logs.save_batch(&logs).await, "save logs");
    let metrics = vec![
        metric(&tn, &e1.id, 0, "a", MetricType::Counter, 1.0),
        metric(&tn, &e1.id, 1, "b", MetricType::Timer, 0.5),
        metric(&tn, &e2.id, 2, "c", MetricType::Counter, 2.0),
    ];
    ok(repos.metrics.save_batch(&metrics).await, "save metrics");

    ok(execs.delete(&tn, &e2.id).await, "soft delete");
    assert_eq!(
        ok(execs.find_by_id(&tn, &e2.id).await, "find deleted"),
        None,
        "a soft-deleted execution is not found"
    );
    let all = ExecutionQuery {
        tenant_id: Some(tn.clone()),
        ..ExecutionQuery::default()
    };
    let page = ok(
        execs.search(&all, &Pageable::default()).await,
        "search after delete",
    );
    assert_eq!(
        exec_ids(&page),
        vec![e1.id.clone()],
        "soft-deleted executions are not searched"
    );
    assert_eq!(page.total, 1);
    assert_eq!(
        ok(
            repos.logs.find_by_execution(&tn, &e2.id, None, None).await,
            "logs of deleted"
        )
        .len(),
        1,
        "a soft delete keeps the logs"
    );

    let count = ok(execs.purge(&tn, &e1.id).await, "purge");
    assert_eq!(
        count,
        PurgeCount {
            executions: 1,
            logs: 3,
            metrics: 2
        },
        "purge counts"
    );
    assert_eq!(ok(execs.find_by_id(&tn, &e1.id).await, "find purged"), None);
    assert!(
        ok(
            repos.logs.find_by_execution(&tn, &e1.id, None, None).await,
            "logs of purged"
        )
        .is_empty(),
        "purge removes the logs"
    );
    assert!(
        ok(
            repos.metrics.find_by_execution(&tn, &e1.id).await,
            "metrics of purged"
        )
        .is_empty(),
        "purge removes the metrics"
    );
    assert_eq!(
        ok(
            repos.logs.find_by_execution(&tn, &e2.id, None, None).await,
            "other logs"
        )
        .len(),
        1,
        "purge leaves other executions' logs"
    );
    assert_eq!(
        ok(
            repos.metrics.find_by_execution(&tn, &e2.id).await,
            "other metrics"
        )
        .len(),
        1,
        "purge leaves other executions' metrics"
    );
}

/// Executions are versioned (`metadata.version`): saving an older version changes nothing (labels
/// included), an equal version replaces (a redelivery is harmless), a newer one replaces; a
/// soft-deleted execution stays deleted whatever is saved after.
pub async fn execution_versions(repos: &Repositories) {
    let execs = &*repos.executions;
    let tn = tenant("execution-versions");
    let mut v2 = execution(&tn, "company.team", "flow-one", t(0), StateType::Running);
    v2.metadata.version = 2;
    v2.labels = vec![Label::new("version", "two")];
    ok(execs.save(&v2).await, "save version 2");
    let mut v1 = execution(&tn, "company.team", "flow-one", t(0), StateType::Success);
    v1.id = v2.id.clone();
    v1.metadata.version = 1;
    v1.labels = vec![Label::new("version", "one")];
    ok(execs.save(&v1).await, "save version 1 after 2");
    assert_eq!(
        ok(execs.find_by_id(&tn, &v2.id).await, "find after older save").as_ref(),
        Some(&v2),
        "an older version never overwrites a newer one"
    );
    let by_label = |value: &str| ExecutionQuery {
        tenant_id: Some(tn.clone()),
        labels: vec![Label::new("version", value)],
        ..ExecutionQuery::default()
    };
    let page = ok(
        execs.search(&by_label("one"), &Pageable::default()).await,
        "search the older labels",
    );
    assert_eq!(page.total, 0, "an older version's labels are not stored");

    let mut v3 = v1.clone();
    v3.metadata.version = 3;
    v3.labels = vec![Label::new("version", "three")];
    ok(execs.save(&v3).await, "save version 3");
    ok(execs.save(&v3).await, "save version 3 again");
    assert_eq!(
        ok(execs.find_by_id(&tn, &v3.id).await, "find version 3").as_ref(),
        Some(&v3),
        "a newer version replaces, and saving it again changes nothing"
    );
    let page = ok(
        execs.search(&by_label("three"), &Pageable::default()).await,
        "search the newer labels",
    );
    assert_eq!(exec_ids(&page), vec![v3.id.clone()]);
    let page = ok(
        execs.search(&by_label("two"), &Pageable::default()).await,
        "search the replaced labels",
    );
    assert_eq!(page.total, 0, "a newer version replaces the labels");

    ok(execs.delete(&tn, &v3.id).await, "soft delete");
    let mut v4 = v3.clone();
    v4.metadata.version = 4;
    ok(execs.save(&v4).await, "save version 4 after the delete");
    assert_eq!(
        ok(execs.find_by_id(&tn, &v4.id).await, "find after delete"),
        None,
        "a soft-deleted execution stays deleted"
    );
}

// ---------------------------------------------------------------------------------------------------
// logs and metrics

/// Logs: `save_batch` (out of order), `find_by_execution` in timestamp order with the minimum level and
/// task run filters; search by `q` (message, case-insensitive), level, namespace, flow, execution and
/// date range, newest first by default, with pagination; `delete_by_execution` counts.
pub async fn logs(repos: &Repositories) {
    let logs = &*repos.logs;
    let tn = tenant("logs");
    let (x, y) = (format!("{tn}-x"), format!("{tn}-y"));
    let line = |exec: &str, ns: &str, flow: &str, tr: &str, secs, level, message: &str| {
        log_line(&tn, ns, flow, exec, tr, secs, level, message)
    };
    let xs = vec![
        line(
            &x,
            "company.team",
            "f",
            "tr1",
            0,
            Level::Trace,
            "trace line",
        ),
        line(
            &x,
            "company.team",
            "f",
            "tr1",
            1,
            Level::Debug,
            "debug line",
        ),
        line(
            &x,
            "company.team",
            "f",
            "tr1",
            2,
            Level::Info,
            "Found a NEEDLE here",
        ),
        line(&x, "company.team", "f", "tr2", 3, Level::Warn, "warn line"),
        line(
            &x,
            "company.team",
            "f",
            "tr2",
            4,
            Level::Error,
            "error line",
        ),
        line(
            &x,
            "company.team",
            "f",
            "tr2",
            5,
            Level::Info,
            "info after error",
        ),
    ];
    let ys = [
        line(
            &y,
            "other",
            "g",
            "tr3",
            6,
            Level::Info,
            "a needle elsewhere",
        ),
        line(&y, "other", "g", "tr3", 7, Level::Error, "y error"),
    ];
    ok(
        logs.save_batch(&[xs[3].clone(), xs[0].clone(), ys[1].clone(), xs[5].clone()])
            .await,
        "save_batch",
    );
    ok(
        logs.save_batch(&[xs[1].clone(), xs[4].clone(), ys[0].clone(), xs[2].clone()])
            .await,
        "save_batch",
    );

    let find = |min: Option<Level>, tr: Option<&'static str>| {
        let x = x.clone();
        let tn = tn.clone();
        async move {
            ok(
                logs.find_by_execution(&tn, &x, min, tr).await,
                "find_by_execution",
            )
        }
    };
    assert_eq!(
        find(None, None).await,
        xs,
        "an execution's logs, in timestamp order, exact"
    );
    assert_eq!(
        find(Some(Level::Warn), None).await,
        vec![xs[3].clone(), xs[4].clone()],
        "min level WARN returns WARN and ERROR"
    );
    assert_eq!(
        find(None, Some("tr1")).await,
        xs[..3].to_vec(),
        "task run filter"
    );
    assert_eq!(
        find(Some(Level::Info), Some("tr2")).await,
        xs[3..].to_vec(),
        "task run and level filters"
    );
    assert!(
        ok(
            logs.find_by_execution("tk-other-tenant", &x, None, None)
                .await,
            "other tenant"
        )
        .is_empty(),
        "logs are per tenant"
    );

    let q = |f: &dyn Fn(&mut LogQuery)| {
        let mut query = LogQuery {
            tenant_id: Some(tn.clone()),
            ..LogQuery::default()
        };
        f(&mut query);
        query
    };
    let x2 = x.clone();
    let cases: Vec<(&str, LogQuery, Vec<&LogEntry>)> = vec![
        (
            "tenant only",
            q(&|_| {}),
            vec![
                &ys[1], &ys[0], &xs[5], &xs[4], &xs[3], &xs[2], &xs[1], &xs[0],
            ],
        ),
        (
            "q on the message, case-insensitive",
            q(&|q| q.q = Some("needle".into())),
            vec![&ys[0], &xs[2]],
        ),
        (
            "min level",
            q(&|q| q.min_level = Some(Level::Warn)),
            vec![&ys[1], &xs[4], &xs[3]],
        ),
        (
            "namespace with children",
            q(&|q| q.namespace = Some("company".into())),
            vec![&xs[5], &xs[4], &xs[3], &xs[2], &xs[1], &xs[0]],
        ),
        (
            "flow id",
            q(&|q| q.flow_id = Some("g".into())),
            vec![&ys[1], &ys[0]],
        ),
        (
            "execution and level",
            q(&|q| {
                q.execution_id = Some(x2.clone());
                q.min_level = Some(Level::Error);
            }),
            vec![&xs[4]],
        ),
        (
            "task run",
            q(&|q| q.task_run_id = Some("tr3".into())),
            vec![&ys[1], &ys[0]],
        ),
        (
            "date range, inclusive",
            q(&|q| {
                q.start_date = Some(t(2));
                q.end_date = Some(t(4));
            }),
            vec![&xs[4], &xs[3], &xs[2]],
        ),
    ];
    for (what, query, expected) in cases {
        let page = ok(logs.search(&query, &Pageable::default()).await, what);
        let expected: Vec<LogEntry> = expected.into_iter().cloned().collect();
        assert_eq!(page.results, expected, "log search (newest first): {what}");
        assert_eq!(
            page.total,
            expected.len() as u64,
            "log search total: {what}"
        );
    }
    let page = ok(
        logs.search(&q(&|_| {}), &Pageable::new(2, 3).sorted("timestamp", false))
            .await,
        "log page 2",
    );
    assert_eq!(
        page.results,
        xs[3..6].to_vec(),
        "page 2 of size 3, oldest first"
    );
    assert_eq!(page.total, 8);
    assert_invalid_sort(
        logs.search(&q(&|_| {}), &Pageable::new(1, 10).sorted("message", false))
            .await,
        "log sort on `message`",
    );
    assert_invalid_query(
        logs.search(&q(&|_| {}), &Pageable::new(0, 10)).await,
        "log page 0",
    );

    assert_eq!(
        ok(
            logs.delete_by_execution(&tn, &x).await,
            "delete_by_execution"
        ),
        6
    );
    assert!(find(None, None).await.is_empty(), "deleted logs are gone");
    assert_eq!(
        ok(
            logs.find_by_execution(&tn, &y, None, None).await,
            "other execution"
        )
        .len(),
        2,
        "other executions' logs stay"
    );
    assert_eq!(
        ok(logs.delete_by_execution(&tn, &x).await, "delete again"),
        0
    );
}

/// Metrics: `save_batch`, `find_by_execution` (exact, in emission order), `delete_by_execution` counts
/// and leaves other executions alone.
pub async fn metrics(repos: &Repositories) {
    let metrics = &*repos.metrics;
    let tn = tenant("metrics");
    let (x, y) = (format!("{tn}-x"), format!("{tn}-y"));
    let xs = vec![
        metric(&tn, &x, 0, "count", MetricType::Counter, 1.0),
        metric(&tn, &x, 1, "duration", MetricType::Timer, 1.5),
        metric(&tn, &x, 2, "rows", MetricType::Counter, 3.0),
    ];
    let ys = vec![metric(&tn, &y, 3, "count", MetricType::Counter, 7.0)];
    ok(metrics.save_batch(&xs[..2]).await, "save_batch");
    ok(
        metrics.save_batch(&[ys[0].clone(), xs[2].clone()]).await,
        "save_batch",
    );
    assert_eq!(
        ok(
            metrics.find_by_execution(&tn, &x).await,
            "find_by_execution"
        ),
        xs,
        "an execution's metrics, exact, in emission order"
    );
    assert!(
        ok(
            metrics.find_by_execution("tk-other-tenant", &x).await,
            "other tenant"
        )
        .is_empty(),
        "metrics are per tenant"
    );
    assert_eq!(ok(metrics.delete_by_execution(&tn, &x).await, "delete"), 3);
    assert!(ok(metrics.find_by_execution(&tn, &x).await, "find deleted").is_empty());
    assert_eq!(
        ok(metrics.find_by_execution(&tn, &y).await, "other execution"),
        ys,
        "other executions' metrics stay"
    );
    assert_eq!(
        ok(metrics.delete_by_execution(&tn, &y).await, "delete y"),
        1
    );
}

/// Logs and metrics carry stable ids: saving an entry again (a redelivered message, in the same
/// batch or a later one) stores it once; two entries with equal content but different ids are both
/// kept.
pub async fn log_and_metric_ids(repos: &Repositories) {
    let (logs, metrics) = (&*repos.logs, &*repos.metrics);
    let tn = tenant("entry-ids");
    let x = format!("{tn}-x");
    let a = log_line(
        &tn,
        "company.team",
        "flow-one",
        &x,
        "tr",
        0,
        Level::Info,
        "same",
    );
    let mut b = a.clone();
    b.id = new_id();
    ok(
        logs.save_batch(&[a.clone(), a.clone()]).await,
        "save log twice",
    );
    ok(
        logs.save_batch(&[a.clone(), b.clone()]).await,
        "save log again",
    );
    let found = ok(
        logs.find_by_execution(&tn, &x, None, None).await,
        "find logs",
    );
    let mut ids: Vec<String> = found.iter().map(|l| l.id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        sorted([a.id.clone(), b.id.clone()]),
        "a redelivered log line is stored once; an equal line with another id is kept"
    );
    assert_eq!(
        ok(
            logs.search(
                &LogQuery {
                    tenant_id: Some(tn.clone()),
                    ..Default::default()
                },
                &Pageable::new(1, 10)
            )
            .await,
            "search logs"
        )
        .total,
        2,
        "search counts each log line once"
    );
    let m = metric(&tn, &x, 0, "count", MetricType::Counter, 1.0);
    let mut n = m.clone();
    n.id = new_id();
    ok(
        metrics.save_batch(&[m.clone(), m.clone()]).await,
        "save metric twice",
    );
    ok(
        metrics.save_batch(&[m.clone(), n.clone()]).await,
        "save metric again",
    );
    let found = ok(metrics.find_by_execution(&tn, &x).await, "find metrics");
    let mut ids: Vec<String> = found.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        sorted([m.id.clone(), n.id.clone()]),
        "a redelivered metric is stored once; an equal metric with another id is kept"
    );
    assert_eq!(found[0], m, "the stored metric keeps its id and content");
    ok(logs.delete_by_execution(&tn, &x).await, "delete logs");
    ok(metrics.delete_by_execution(&tn, &x).await, "delete metrics");
}

// ---------------------------------------------------------------------------------------------------
// triggers

fn trigger(
    tenant: &str,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
    next: Option<DateTime<Utc>>,
) -> TriggerState {
    TriggerState {
        tenant_id: tenant.to_string(),
        namespace: namespace.to_string(),
        flow_id: flow_id.to_string(),
        trigger_id: trigger_id.to_string(),
        flow_revision: Some(1),
        date: None,
        next_execution_date: next,
        execution_id: None,
        evaluate_running_date: None,
        worker_id: None,
        disabled: false,
        error: None,
        backfill: None,
        updated_date: t(0),
    }
}

/// Triggers: save/find by uid (exact), `find_all` per tenant, search (namespace with children, flow id,
/// `q` on flow and trigger ids, sort, pagination), save again replaces, delete.
pub async fn triggers(repos: &Repositories) {
    let triggers = &*repos.triggers;
    let tn = tenant("triggers");
    let mut t1 = trigger(&tn, "company.team", "f1", "schedule", Some(t(HOUR)));
    let t2 = trigger(&tn, "companyx", "f2", "poll", Some(t(2 * HOUR)));
    let t3 = trigger(&tn, "company", "f1", "daily", None);
    for tr in [&t1, &t2, &t3] {
        ok(triggers.save(tr).await, "save trigger");
    }
    assert_eq!(
        ok(triggers.find(&t1.uid()).await, "find").as_ref(),
        Some(&t1),
        "a trigger reads back exactly as saved"
    );
    assert_eq!(
        ok(triggers.find(&format!("{tn}_nope")).await, "find absent"),
        None
    );
    let all = ok(triggers.find_all(&tn).await, "find_all");
    assert_eq!(
        sorted(all.iter().map(|t| t.uid())),
        sorted([t1.uid(), t2.uid(), t3.uid()]),
        "find_all: the tenant's triggers"
    );

    let q = |f: &dyn Fn(&mut TriggerQuery)| {
        let mut query = TriggerQuery {
            tenant_id: Some(tn.clone()),
            ..TriggerQuery::default()
        };
        f(&mut query);
        query
    };
    let by_trigger = Pageable::new(1, 25).sorted("triggerId", false);
    let cases: Vec<(&str, TriggerQuery, Vec<&str>)> = vec![
        ("tenant only", q(&|_| {}), vec!["daily", "poll", "schedule"]),
        (
            "namespace with children",
            q(&|q| q.namespace = Some("company".into())),
            vec!["daily", "schedule"],
        ),
        (
            "flow id",
            q(&|q| q.flow_id = Some("f1".into())),
            vec!["daily", "schedule"],
        ),
        (
            "q on trigger id",
            q(&|q| q.q = Some("POLL".into())),
            vec!["poll"],
        ),
        (
            "q on flow id",
            q(&|q| q.q = Some("f2".into())),
            vec!["poll"],
        ),
    ];
    for (what, query, expected) in cases {
        let page = ok(triggers.search(&query, &by_trigger).await, what);
        assert_eq!(
            page.results
                .iter()
                .map(|t| t.trigger_id.as_str())
                .collect::<Vec<_>>(),
            expected,
            "trigger search: {what}"
        );
        assert_eq!(
            page.total,
            expected.len() as u64,
            "trigger search total: {what}"
        );
    }
    let page = ok(
        triggers
            .search(&q(&|_| {}), &Pageable::new(2, 2).sorted("triggerId", true))
            .await,
        "trigger page 2",
    );
    assert_eq!(
        page.results
            .iter()
            .map(|t| t.trigger_id.as_str())
            .collect::<Vec<_>>(),
        vec!["daily"],
        "page 2 of size 2, triggerId desc"
    );
    assert_eq!(page.total, 3);
    assert_invalid_sort(
        triggers
            .search(&q(&|_| {}), &Pageable::new(1, 25).sorted("nope", false))
            .await,
        "trigger sort on `nope`",
    );

    t1.disabled = true;
    t1.error = Some("boom".to_string());
    t1.updated_date = t(60);
    ok(triggers.save(&t1).await, "save trigger again");
    assert_eq!(
        ok(triggers.find(&t1.uid()).await, "find replaced").as_ref(),
        Some(&t1),
        "saving again replaces"
    );
    assert_eq!(
        ok(triggers.find_all(&tn).await, "find_all").len(),
        3,
        "no duplicate on save"
    );

    ok(triggers.delete(&t2.uid()).await, "delete trigger");
    assert_eq!(ok(triggers.find(&t2.uid()).await, "find deleted"), None);
    assert_eq!(
        ok(triggers.find_all(&tn).await, "find_all after delete").len(),
        2
    );
    for tr in [&t1, &t3] {
        ok(triggers.delete(&tr.uid()).await, "delete trigger");
    }
}

/// Concurrent saves of one new flow all succeed: with one source, exactly one creates revision 1
/// and the others find it unchanged; with different sources, every save gets its own revision.
pub async fn flow_concurrent_first_saves(repos: &Repositories) {
    let tn = tenant("flow-race");
    for (round, same_source) in [(0, true), (1, false)] {
        let id = format!("raced{round}");
        let mut handles = Vec::new();
        for i in 0..6 {
            let flows = repos.flows.clone();
            let message = if same_source {
                "same".to_string()
            } else {
                format!("m{i}")
            };
            let record = flow(&tn, "company", &id, "race", &message, &[]);
            handles.push(tokio::spawn(async move { flows.save(record).await }));
        }
        let mut outcomes = Vec::new();
        for h in handles {
            match h.await {
                Ok(r) => outcomes.push(ok(r, "concurrent first save of a flow")),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("save task failed: {e}"),
            }
        }
        let created = outcomes
            .iter()
            .filter(|(_, o)| *o == SaveOutcome::Created)
            .count();
        assert_eq!(
            created, 1,
            "exactly one save creates the flow: {outcomes:?}"
        );
        let revisions: BTreeSet<i32> = outcomes.iter().map(|(r, _)| r.revision).collect();
        if same_source {
            assert_eq!(
                revisions,
                BTreeSet::from([1]),
                "one source, one revision: {outcomes:?}"
            );
        } else {
            assert_eq!(
                revisions,
                (1..=6).collect::<BTreeSet<i32>>(),
                "six sources, six revisions: {outcomes:?}"
            );
        }
        let stored = ok(
            repos.flows.revisions(&tn, "company", &id).await,
            "flow revisions",
        );
        assert_eq!(stored.len(), revisions.len());
    }
}

// ---------------------------------------------------------------------------------------------------
// service instances

/// Service instances: save/find (exact), save again replaces (upsert), `find_all` lists each once,
/// delete removes.
pub async fn service_instances(repos: &Repositories) {
    let services = &*repos.services;
    let instance = |id: &str, type_, state, secs| ServiceInstance {
        id: id.to_string(),
        type_,
        state,
        hostname: "testkit-host".to_string(),
        created_date: t(0),
        updated_date: t(secs),
        props: serde_json::Map::new(),
    };
    let (id1, id2) = (
        format!("tk-svc-{}", new_id()),
        format!("tk-svc-{}", new_id()),
    );
    let s1 = instance(&id1, ServiceType::Worker, ServiceState::Created, 0);
    let s2 = instance(&id2, ServiceType::Executor, ServiceState::Running, 0);
    ok(services.save(&s1).await, "save");
    ok(services.save(&s2).await, "save");
    assert_eq!(
        ok(services.find_by_id(&id1).await, "find").as_ref(),
        Some(&s1),
        "an instance reads back exactly as saved"
    );
    let mut s1b = s1.clone();
    s1b.state = ServiceState::Running;
    s1b.updated_date = t(30);
    s1b.props.insert("workerGroup".into(), json!("gpu"));
    ok(services.save(&s1b).await, "save again");
    assert_eq!(
        ok(services.find_by_id(&id1).await, "find replaced").as_ref(),
        Some(&s1b),
        "saving again replaces"
    );
    let all = ok(services.find_all().await, "find_all");
    let ours: Vec<&ServiceInstance> = all.iter().filter(|s| s.id == id1 || s.id == id2).collect();
    assert_eq!(ours.len(), 2, "find_all lists each instance once: {ours:?}");
    assert!(ours.contains(&&s1b) && ours.contains(&&s2));

    ok(services.delete(&id1).await, "delete");
    assert_eq!(ok(services.find_by_id(&id1).await, "find deleted"), None);
    let all = ok(services.find_all().await, "find_all after delete");
    assert!(
        !all.iter().any(|s| s.id == id1),
        "a deleted instance is not listed"
    );
    assert!(all.iter().any(|s| s.id == id2), "other instances stay");
    ok(services.delete(&id2).await, "delete");
}

/// Published flow revisions ([`FlowRepository::put_revision`](crate::repository::FlowRepository::put_revision)),
/// for the repositories an indexer feeds from the flow topic (not in [`run_all`]: a repository written
/// only by its own queue's units, JDBC, refuses them). Each revision is stored as published (revision,
/// date, deletion kept); a revision delivered again changes nothing; a revision replayed out of order
/// never replaces a newer one as the latest; a published deletion hides the flow from lookups and
/// searches while its history stays.
pub async fn flow_published_revisions(repos: &Repositories) {
    let flows = &*repos.flows;
    let tn = tenant("flow-published");
    let (ns, id) = ("company.published", "replayed");
    let mut v1 = flow(&tn, ns, id, "first", "v1", &[]);
    v1.revision = 1;
    v1.updated = t(10);
    let mut v2 = flow(&tn, ns, id, "second", "v2", &[]);
    v2.revision = 2;
    v2.updated = t(20);

    ok(flows.put_revision(&v2).await, "put revision 2 first");
    ok(
        flows.put_revision(&v1).await,
        "put revision 1 after 2 (a replay out of order)",
    );
    let latest =
        ok(flows.find(&tn, ns, id, None).await, "find the latest").expect("the flow exists");
    assert_eq!(
        latest.revision, 2,
        "an older revision put later is not the latest"
    );
    assert_eq!(
        latest.source, v2.source,
        "the latest has revision 2's source"
    );
    assert_eq!(latest.updated, t(20), "the published date is kept");
    let first = ok(flows.find(&tn, ns, id, Some(1)).await, "find revision 1").expect("revision 1");
    assert_eq!(first.source, v1.source, "revision 1 is stored as published");

    // Delivered again: nothing changes, nothing is doubled.
    ok(flows.put_revision(&v2).await, "put revision 2 again");
    ok(flows.put_revision(&v1).await, "put revision 1 again");
    let revisions = ok(flows.revisions(&tn, ns, id).await, "revisions");
    assert_eq!(
        revisions.iter().map(|r| r.revision).collect::<Vec<_>>(),
        vec![1, 2],
        "each published revision stored once"
    );

    // A published deletion: lookups and searches miss the flow, its history stays.
    let mut gone = v2.clone();
    gone.revision = 3;
    gone.deleted = true;
    gone.updated = t(30);
    ok(flows.put_revision(&gone).await, "put the deletion");
    assert!(
        ok(
            flows.find(&tn, ns, id, None).await,
            "find after the deletion"
        )
        .is_none(),
        "a published deletion hides the flow"
    );
    let listed = ok(
        flows
            .search(
                &FlowQuery {
                    tenant_id: Some(tn.clone()),
                    ..FlowQuery::default()
                },
                &Pageable::default(),
            )
            .await,
        "search after the deletion",
    );
    assert!(
        listed.results.is_empty(),
        "a deleted flow is not searched: {:?}",
        flow_ids(&listed)
    );
    let revisions = ok(
        flows.revisions(&tn, ns, id).await,
        "revisions after the deletion",
    );
    assert_eq!(
        revisions.iter().map(|r| r.revision).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "the history keeps every revision"
    );
}

/// `save_batch` keeps the versioned semantics of `save`: in one batch several versions of one
/// execution in any order leave the newest; an older version than the stored one changes nothing;
/// a soft-deleted execution stays deleted; an empty batch is fine.
pub async fn execution_batches(repos: &Repositories) {
    let execs = &*repos.executions;
    let tn = tenant("execution-batches");
    let version = |base: &Execution, v: u64, state: StateType| {
        let mut e = execution(&tn, &base.namespace, &base.flow_id, t(0), state);
        e.id = base.id.clone();
        e.metadata.version = v;
        e.labels = vec![Label::new("version", v.to_string())];
        e
    };
    let a = execution(&tn, "company.team", "flow-a", t(0), StateType::Running);
    let b = execution(&tn, "company.team", "flow-b", t(1), StateType::Running);
    let a2 = version(&a, 2, StateType::Running);
    let a3 = version(&a, 3, StateType::Success);
    let a1 = version(&a, 1, StateType::Created);
    let b1 = version(&b, 1, StateType::Created);
    ok(execs.save_batch(&[]).await, "save an empty batch");
    ok(
        execs
            .save_batch(&[a2.clone(), a3.clone(), b1.clone(), a1.clone()])
            .await,
        "save a batch of versions out of order",
    );
    assert_eq!(
        ok(execs.find_by_id(&tn, &a.id).await, "find a").as_ref(),
        Some(&a3),
        "the newest version of a batch stays, whatever the order"
    );
    assert_eq!(
        ok(execs.find_by_id(&tn, &b.id).await, "find b").as_ref(),
        Some(&b1),
        "every execution of a batch is stored"
    );
    let page = ok(
        execs
            .search(
                &ExecutionQuery {
                    tenant_id: Some(tn.clone()),
                    states: vec![StateType::Success],
                    ..ExecutionQuery::default()
                },
                &Pageable::default(),
            )
            .await,
        "search the batch",
    );
    assert_eq!(
        exec_ids(&page),
        vec![a.id.clone()],
        "searches see the batch"
    );
    ok(
        execs
            .save_batch(&[a2.clone(), version(&b, 2, StateType::Success)])
            .await,
        "save an older version of a with a newer one of b",
    );
    assert_eq!(
        ok(execs.find_by_id(&tn, &a.id).await, "find a again").as_ref(),
        Some(&a3),
        "an older version in a batch never overwrites a newer stored one"
    );
    assert_eq!(
        ok(execs.find_by_id(&tn, &b.id).await, "find b again").map(|e| e.metadata.version),
        Some(2),
        "the newer version beside it is stored"
    );
    ok(execs.delete(&tn, &a.id).await, "soft delete a");
    ok(
        execs
            .save_batch(&[version(&a, 4, StateType::Success)])
            .await,
        "save a newer version of a deleted execution",
    );
    assert_eq!(
        ok(execs.find_by_id(&tn, &a.id).await, "find deleted a"),
        None,
        "a soft-deleted execution stays deleted"
    );
}

// ---------------------------------------------------------------------------------------------------
// everything

/// Every check above, one after the other.
pub async fn run_all(repos: &Repositories) {
    flow_revisions(repos).await;
    flow_search(repos).await;
    flow_concurrent_first_saves(repos).await;
    execution_search(repos).await;
    execution_find_by_ids(repos).await;
    execution_search_page_agrees_with_total(repos).await;
    execution_sort_and_pagination(repos).await;
    execution_delete_and_purge(repos).await;
    execution_versions(repos).await;
    execution_batches(repos).await;
    logs(repos).await;
    metrics(repos).await;
    log_and_metric_ids(repos).await;
    triggers(repos).await;
    service_instances(repos).await;
}

/// The suite run on the testkit's own in-memory repositories.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::memory::MemoryRepositories;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_memory_repositories_pass_the_whole_suite() {
        let repos = MemoryRepositories::new().repositories();
        run_all(&repos).await;
        // A shared store: running everything again must pass too.
        run_all(&repos).await;
        flow_published_revisions(&repos).await;
    }
}
