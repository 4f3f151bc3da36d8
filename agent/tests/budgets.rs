//! One tenant's policies cannot take another namespace's share of the node:
//! a policy or namespace over its budget is rejected whole, what was
//! admitted keeps its place, and the other namespaces compile as if the
//! abusive policy were not there.

mod support;

use std::collections::BTreeSet;

use palisade_agent::{
    index::{Index, Kind, ObjectKey},
    model::{Model, ObjectRef, policy::PolicyOrigin},
    policy::{
        Budgets, Compiler, DesiredState, Profile,
        budget::{InForce, Reason},
        compile, sim,
    },
};
use palisade_common::PROTO_TCP;
use support::*;

/// Namespace `victim`: a server (app: srv) that its client may reach on
/// port 80. Namespace `tenant`: one pod.
fn base() -> String {
    let mut s = ns("victim", "team: v") + &ns("tenant", "team: t");
    s += &pod("victim", "srv", "app: srv", "10.2.0.10");
    s += &pod("victim", "cli", "app: cli", "10.2.0.11");
    s += &pod("tenant", "t0", "app: t", "10.3.0.10");
    s += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: victim}\n\
          spec:\n  podSelector: {matchLabels: {app: srv}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: cli}}}]\n    ports: [{port: 80}]\n";
    s
}

/// A valid policy in `tenant` asking for `peers` x `ports` x 3 protocols entries.
fn flood(name: &str, peers: usize, ports: usize) -> String {
    let mut s = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: tenant}}\n\
         spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n"
    );
    for i in 0..peers {
        s += &format!("    - podSelector: {{matchLabels: {{peer: p{i}}}}}\n");
    }
    s += "    ports:\n";
    for i in 0..ports {
        for proto in ["TCP", "UDP", "SCTP"] {
            s += &format!("    - {{port: {}, protocol: {proto}}}\n", 1000 + i);
        }
    }
    s
}

/// A tenant policy whose ipBlock excepts every /32 of `10.2.<third>.0/24`
/// for `thirds`: each except can split the identity of a pod it names.
fn excepts(name: &str, thirds: std::ops::Range<u32>) -> String {
    let mut s = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: tenant}}\n\
         spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.2.0.0/16\n        except:\n"
    );
    for t in thirds {
        for h in 0..256 {
            s += &format!("        - 10.2.{t}.{h}/32\n");
        }
    }
    s
}

fn index(yaml: &str) -> Index {
    let mut index = Index::default();
    apply(&mut index, yaml);
    index
}

fn apply(index: &mut Index, yaml: &str) {
    for o in objects(yaml) {
        index.apply(&o).expect("valid");
    }
}

fn policy_key(name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::NetworkPolicy,
        object: ObjectRef::new("tenant", name),
    }
}

/// The victim namespace's part of a compiled state, ids replaced by meaning.
fn victims_part(state: &DesiredState) -> Vec<String> {
    let c = canonical(state);
    let victim = |p: &Option<ObjectRef>| p.as_ref().is_some_and(|p| p.namespace == "victim");
    let mut out: Vec<String> = c
        .policy
        .iter()
        .filter(|e| victim(&e.0))
        .map(|e| format!("{e:?}"))
        .collect();
    out.extend(
        c.endpoint_info
            .iter()
            .filter(|(p, _)| victim(p))
            .map(|i| format!("{i:?}")),
    );
    out.extend(
        c.endpoints
            .iter()
            .filter(|(_, (p, _))| victim(p))
            .map(|e| format!("{e:?}")),
    );
    out
}

fn without_tenant_policies(m: &Model) -> Model {
    let mut m = m.clone();
    m.policies.retain(|k, _| k.namespace != "tenant");
    m
}

fn rules_of(state: &DesiredState, name: &str) -> usize {
    let origin = PolicyOrigin::NetworkPolicy(ObjectRef::new("tenant", name));
    let ids: BTreeSet<u32> = state
        .rules
        .iter()
        .filter(|(_, r)| r.origin == origin)
        .map(|(id, _)| *id)
        .collect();
    state
        .maps
        .policy
        .values()
        .filter(|r| ids.contains(r))
        .count()
}

#[test]
fn an_abusive_policy_is_rejected_whole_and_a_new_pod_elsewhere_is_enforced() {
    // 400 peers x 1,000 ports x 3 protocols: 1.2 million entries asked for.
    let mut idx = index(&(base() + &flood("flood", 400, 1000)));
    let mut compiler = Compiler::default();
    let profile = Profile::default();
    let state = compiler.compile(idx.model(), &node(), &profile);

    let r = &state.rejected[&PolicyOrigin::NetworkPolicy(ObjectRef::new("tenant", "flood"))];
    assert_eq!(r.reason, Reason::PolicyEntries);
    assert_eq!((r.cost, r.limit), (1_200_000, 50_000));
    assert_eq!(r.in_force, InForce::IsolationOnly);
    let text = r.to_string();
    assert!(
        text.contains("tenant/flood") && text.contains("1200000") && text.contains("50000"),
        "names the policy and the limit: {text}"
    );
    assert_eq!(state.rejected.len(), 1, "nothing else is rejected");
    // Never half-written: not one entry of it; its pod is isolated (fail closed).
    assert_eq!(rules_of(&state, "flood"), 0);
    let t0 = state.maps.endpoints[&ip("10.3.0.10")];
    let info = &state.endpoint_info[&t0.id];
    assert_eq!(
        info.ingress_isolated_by,
        vec![PolicyOrigin::NetworkPolicy(ObjectRef::new(
            "tenant", "flood"
        ))]
    );
    assert!(
        !sim::connection_allowed(
            &state.maps,
            ip("10.2.0.11"),
            ip("10.3.0.10"),
            PROTO_TCP,
            1000
        ),
        "the rejected policy allows nothing"
    );

    // A new pod in the victim namespace, selected by its own policy.
    apply(&mut idx, &pod("victim", "srv2", "app: srv", "10.2.0.12"));
    let state = compiler.compile(idx.model(), &node(), &profile);
    let cli = ip("10.2.0.11");
    assert!(sim::connection_allowed(
        &state.maps,
        cli,
        ip("10.2.0.12"),
        PROTO_TCP,
        80
    ));
    assert!(!sim::connection_allowed(
        &state.maps,
        cli,
        ip("10.2.0.12"),
        PROTO_TCP,
        81
    ));
    assert!(!sim::connection_allowed(
        &state.maps,
        ip("10.3.0.10"),
        ip("10.2.0.12"),
        PROTO_TCP,
        80
    ));
    // Exactly what it would be without the tenant's policy.
    let clean = compile(&without_tenant_policies(idx.model()), &node(), &profile);
    assert_eq!(victims_part(&state), victims_part(&clean));
}

#[test]
fn an_edit_over_budget_keeps_the_last_admitted_version_in_force() {
    let mut idx = index(&(base() + &flood("grow", 2, 10)));
    let mut compiler = Compiler::default();
    let profile = Profile::default();
    let before = compiler.compile(idx.model(), &node(), &profile);
    assert!(before.rejected.is_empty());
    assert_eq!(rules_of(&before, "grow"), 0, "no pod has the peer labels");

    apply(&mut idx, &flood("grow", 400, 1000));
    let after = compiler.compile(idx.model(), &node(), &profile);
    let r = &after.rejected[&PolicyOrigin::NetworkPolicy(ObjectRef::new("tenant", "grow"))];
    assert_eq!(r.in_force, InForce::LastAdmitted);
    assert_eq!(
        canonical(&after),
        canonical(&before),
        "the maps did not move"
    );

    // Back within budget: enforced as written, the rejection gone.
    apply(&mut idx, &flood("grow", 3, 10));
    assert!(
        compiler
            .compile(idx.model(), &node(), &profile)
            .rejected
            .is_empty()
    );
}

#[test]
fn a_namespace_budget_rejects_the_newcomer_never_what_is_enforced() {
    // Each policy asks for 2 x 10 x 3 = 60 entries; the namespace may have 100.
    let budgets = Budgets {
        namespace_entries: 100,
        ..Budgets::default()
    };
    let mut idx = index(&(base() + &flood("zz-first", 2, 10)));
    let mut compiler = Compiler::default().with_budgets(budgets);
    let profile = Profile::default();
    assert!(
        compiler
            .compile(idx.model(), &node(), &profile)
            .rejected
            .is_empty()
    );

    // "aa" sorts first but came second: it is the one over the budget.
    apply(&mut idx, &flood("aa-second", 2, 10));
    let state = compiler.compile(idx.model(), &node(), &profile);
    let rejected: Vec<_> = state.rejected.keys().map(ToString::to_string).collect();
    assert_eq!(rejected, ["tenant/aa-second"]);
    let r = &state.rejected[&PolicyOrigin::NetworkPolicy(ObjectRef::new("tenant", "aa-second"))];
    assert_eq!(
        (r.reason, r.cost, r.limit),
        (Reason::NamespaceEntries, 120, 100)
    );
    // Stable across compiles.
    let again = compiler.compile(idx.model(), &node(), &profile);
    assert_eq!(again.rejected, state.rejected);

    // Room again once the first one goes.
    idx.delete(&policy_key("zz-first"));
    assert!(
        compiler
            .compile(idx.model(), &node(), &profile)
            .rejected
            .is_empty()
    );
}

#[test]
fn a_tenants_excepts_cannot_multiply_another_namespaces_identities() {
    // 40 victim pods with one set of labels: one identity for the victim's rules.
    let mut yaml = base();
    for i in 0..40 {
        yaml += &pod(
            "victim",
            &format!("c{i}"),
            "app: cli",
            &format!("10.2.1.{}", i + 1),
        );
    }
    let m = model(&yaml);
    let profile = Profile::default();
    let clean = compile(&m, &node(), &profile);
    let clean_entries = clean.maps.policy.len();

    // Excepting every /32 of the victim's addresses would give each victim
    // pod an identity of its own (1,280 CIDRs in one policy).
    let abusive = model(&(yaml.clone() + &excepts("split", 0..5)));
    let state = compile(&abusive, &node(), &profile);
    assert_eq!(
        state.rejected[&PolicyOrigin::NetworkPolicy(ObjectRef::new("tenant", "split"))].reason,
        Reason::PolicyCidrs
    );
    assert_eq!(state.maps.policy.len(), clean_entries);
    assert_eq!(victims_part(&state), victims_part(&clean));
    assert_eq!(
        state.maps.ipcache.len(),
        clean.maps.ipcache.len(),
        "none of its CIDRs reached the ipcache"
    );

    // Split over six policies of 769 CIDRs each, the namespace budget
    // (4,000) stops the sixth.
    let mut split = yaml.clone();
    for t in 0..6 {
        split += &excepts(&format!("split{t}"), 3 * t..3 * t + 3);
    }
    let state = compile(&model(&split), &node(), &profile);
    let rejected: Vec<(String, Reason)> = state
        .rejected
        .iter()
        .map(|(k, r)| (k.to_string(), r.reason))
        .collect();
    assert_eq!(rejected, [("tenant/split5".into(), Reason::NamespaceCidrs)]);

    // Without budgets, the same policy multiplies the victim's entries: the
    // abuse the budget prevents.
    let unbounded = Compiler::default()
        .with_budgets(Budgets::unlimited())
        .compile(&abusive, &node(), &profile);
    assert!(
        unbounded.maps.policy.len() > clean_entries + 30,
        "{} entries vs {clean_entries}",
        unbounded.maps.policy.len()
    );
}

#[test]
fn a_modest_policy_selecting_many_pods_is_held_by_the_namespace_budget() {
    // 3 peers x 1,000 ports = 3,000 entries per pod: within the per-policy
    // budget, but 100 selected pods make 300,000 on this node (budget 200,000).
    let mut yaml = base();
    for i in 0..100 {
        yaml += &pod(
            "tenant",
            &format!("w{i}"),
            "app: w",
            &format!("10.3.1.{}", i + 1),
        );
    }
    let mut wide = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: wide, namespace: tenant}\n\
                spec:\n  podSelector: {matchLabels: {app: w}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {a: '1'}}}, {podSelector: {matchLabels: {a: '2'}}}, {podSelector: {matchLabels: {a: '3'}}}]\n    ports:\n".to_string();
    for port in 1..=1000 {
        wide += &format!("    - {{port: {port}}}\n");
    }
    let m = model(&(yaml + &wide));
    let profile = Profile::default();
    let state = compile(&m, &node(), &profile);
    let r = &state.rejected[&PolicyOrigin::NetworkPolicy(ObjectRef::new("tenant", "wide"))];
    assert_eq!(r.reason, Reason::NamespaceEntries);
    assert_eq!(r.limit, 200_000);
    assert!(r.cost > 200_000, "{r}");
    let clean = compile(&without_tenant_policies(&m), &node(), &profile);
    assert_eq!(victims_part(&state), victims_part(&clean));
}

/// The tenant at the top of every budget: one policy of 50 peers (each a
/// pod of its own) x 1,000 ports on one pod (50,000 entries), and four of
/// 999 CIDRs each (3,996 of the 4,000 the namespace may have).
fn tenant_at_its_budget() -> String {
    let mut s = String::new();
    for i in 0..50 {
        s += &pod(
            "tenant",
            &format!("peer{i}"),
            &format!("peer: p{i}"),
            &format!("10.3.2.{}", i + 1),
        );
    }
    s += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: big, namespace: tenant}\n\
          spec:\n  podSelector: {matchLabels: {app: t}}\n  ingress:\n  - from:\n";
    for i in 0..50 {
        s += &format!("    - podSelector: {{matchLabels: {{peer: p{i}}}}}\n");
    }
    s += "    ports:\n";
    for port in 1..=1000 {
        s += &format!("    - {{port: {port}}}\n");
    }
    for p in 0..4 {
        s += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: cidrs{p}, namespace: tenant}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: t}}}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.{}.0.0/16\n        except:\n",
            100 + p
        );
        for e in 0..998 {
            s += &format!("        - 10.{}.{}.{}/32\n", 100 + p, e / 256, e % 256);
        }
    }
    s
}

#[test]
fn a_tenant_at_its_budget_adds_no_work_to_another_namespaces_edit() {
    let mut victims = base();
    for i in 0..20 {
        victims += &pod(
            "victim",
            &format!("c{i}"),
            "app: cli",
            &format!("10.2.1.{}", i + 1),
        );
    }
    let edit = |yaml: &str| yaml.replace("ports: [{port: 80}]", "ports: [{port: 8080}]");
    let profile = Profile::default();
    // The victim edits its policy, alone on the node and beside the tenant.
    let cost_of_edit = |yaml: &str| {
        let mut compiler = Compiler::default();
        let before = compiler.compile(&model(yaml), &node(), &profile);
        assert!(before.rejected.is_empty(), "{:?}", before.rejected);
        let after = compiler.compile(&model(&edit(yaml)), &node(), &profile);
        (compiler.stats(), before, after)
    };
    let (alone, alone_before, _) = cost_of_edit(&victims);
    let (beside, before, after) = cost_of_edit(&(victims.clone() + &tenant_at_its_budget()));
    let tenant_entries = before.maps.policy.len() - alone_before.maps.policy.len();
    assert!(
        tenant_entries >= 50_000,
        "the tenant is really there: {tenant_entries}"
    );

    // No pod re-signed, and only the edited rule evaluated: once per
    // identity. The tenant's rules cost nothing.
    assert_eq!((alone.pods_signed, beside.pods_signed), (0, 0));
    assert_eq!(alone.rule_evaluations, alone_before.identities.len());
    assert_eq!(beside.rule_evaluations, after.identities.len());
    // What the tenant adds to that is bounded by its CIDR budget: each
    // CIDR is one identity and can split one more.
    let extra = beside.rule_evaluations - alone.rule_evaluations;
    assert!(
        extra <= 2 * Budgets::default().namespace_cidrs as usize + 60,
        "{extra} more evaluations"
    );
    let cli = ip("10.2.1.1");
    assert!(sim::connection_allowed(
        &after.maps,
        cli,
        ip("10.2.0.10"),
        PROTO_TCP,
        8080
    ));
    assert!(!sim::connection_allowed(
        &after.maps,
        cli,
        ip("10.2.0.10"),
        PROTO_TCP,
        80
    ));
}

/// A tenant's Calico NetworkPolicy of `peers` selectors x `ports` ports.
fn calico_flood(name: &str, peers: usize, ports: usize) -> String {
    let mut s = format!(
        "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: tenant}}\n\
         spec:\n  selector: all()\n  types: [Ingress]\n  ingress:\n"
    );
    for i in 0..peers {
        s += &format!(
            "  - action: Allow\n    protocol: TCP\n    source: {{selector: 'peer == \"p{i}\"'}}\n    destination:\n      ports: [{}]\n",
            (0..ports)
                .map(|p| (1000 + p).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s
}

#[test]
fn a_tenants_oversized_calico_policy_is_rejected_and_fails_closed() {
    // 100 rules of 1,000 ports: 100,000 entries asked for, over 50,000.
    let yaml = base() + &calico_flood("flood", 100, 1000);
    let idx = index(&yaml);
    let mut compiler = Compiler::default();
    let profile = Profile::default();
    let state = compiler.compile(idx.model(), &node(), &profile);
    assert_eq!(state.rejected.len(), 1, "{:?}", state.rejected);
    let r = state.rejected.values().next().expect("one");
    assert_eq!(r.reason, Reason::PolicyEntries);
    assert_eq!((r.cost, r.limit), (100_000, 50_000));
    assert_eq!(r.in_force, InForce::IsolationOnly);
    let text = r.to_string();
    assert!(
        text.contains("NetworkPolicy.projectcalico.org") && text.contains("tenant/flood"),
        "{text}"
    );
    // Fail closed: the tenant's pod admits nothing; the victim is as before.
    let t0: std::net::IpAddr = "10.3.0.10".parse().expect("ip");
    let cli: std::net::IpAddr = "10.2.0.11".parse().expect("ip");
    assert!(!sim::connection_allowed(
        &state.maps,
        cli,
        t0,
        PROTO_TCP,
        1000
    ));
    let alone = compiler.compile(&without_tenant_calico(idx.model()), &node(), &profile);
    assert_eq!(victims_part(&state), victims_part(&alone));

    // Within budget, the same tenant's policy is enforced as written.
    let small = index(&(base() + &calico_flood("flood", 3, 10)));
    let state = Compiler::default().compile(small.model(), &node(), &profile);
    assert!(state.rejected.is_empty(), "{:?}", state.rejected);
}

#[test]
fn calico_policies_share_their_namespaces_budget_with_network_policies() {
    // 39,960 and 20,000 entries on one pod: each fits a namespace budget
    // of 50,000 alone, not together. NetworkPolicies are counted first, so
    // the Calico policy is the one rejected.
    let mut yaml = base() + &flood("np", 40, 333);
    yaml += &calico_flood("calico", 40, 500);
    let idx = index(&yaml);
    let budgets = Budgets {
        namespace_entries: 50_000,
        ..Budgets::default()
    };
    let state = Compiler::default().with_budgets(budgets).compile(
        idx.model(),
        &node(),
        &Profile::default(),
    );
    assert_eq!(state.rejected.len(), 1, "{:?}", state.rejected);
    let r = state.rejected.values().next().expect("one");
    assert_eq!(r.reason, Reason::NamespaceEntries);
    assert!(matches!(r.policy, PolicyOrigin::Ordered(_)), "{r}");
}

fn without_tenant_calico(m: &Model) -> Model {
    let mut m = m.clone();
    m.ordered.clear();
    m
}

#[test]
fn what_a_tenants_calico_policy_flattens_to_is_held_to_its_namespace_budget() {
    // 300 peers of distinct labels: 300 identities. "Allow all TCP but
    // ports 5, 7 and 9" is cheap as text but flattens to entries for
    // every identity and allowed interval at the pod it selects.
    let mut yaml = base();
    for i in 0..300 {
        yaml += &pod(
            "victim",
            &format!("p{i}"),
            &format!("id: i{i}"),
            &format!("10.2.{}.{}", 1 + i / 200, 1 + i % 200),
        );
    }
    yaml += "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: all-but, namespace: tenant}\n\
             spec:\n  selector: all()\n  types: [Ingress]\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {notPorts: [5, 7, 9]}\n";
    let idx = index(&yaml);
    let profile = Profile::default();
    let roomy = Compiler::default().compile(idx.model(), &node(), &profile);
    assert!(roomy.rejected.is_empty(), "{:?}", roomy.rejected);
    let t0: std::net::IpAddr = "10.3.0.10".parse().expect("ip");
    let cli: std::net::IpAddr = "10.2.0.11".parse().expect("ip");
    assert!(sim::connection_allowed(&roomy.maps, cli, t0, PROTO_TCP, 80));
    let flattened = roomy.maps.policy.len()
        - Compiler::default()
            .compile(&without_tenant_calico(idx.model()), &node(), &profile)
            .maps
            .policy
            .len();
    assert!(
        flattened > 3000,
        "one entry per identity and interval: {flattened}"
    );

    let budgets = Budgets {
        namespace_entries: 2_000,
        ..Budgets::default()
    };
    let tight = Compiler::default()
        .with_budgets(budgets)
        .compile(idx.model(), &node(), &profile);
    assert_eq!(tight.rejected.len(), 1, "{:?}", tight.rejected);
    let r = tight.rejected.values().next().expect("one");
    assert_eq!(r.reason, Reason::NamespaceEntries);
    assert_eq!(r.in_force, InForce::IsolationOnly);
    assert!(r.to_string().contains("tenant/all-but"), "{r}");
    assert!(
        !sim::connection_allowed(&tight.maps, cli, t0, PROTO_TCP, 80),
        "fail closed: the tenant's pod admits nothing"
    );
    let alone = Compiler::default().with_budgets(budgets).compile(
        &without_tenant_calico(idx.model()),
        &node(),
        &profile,
    );
    assert_eq!(
        tight.maps.policy.len(),
        alone.maps.policy.len(),
        "nothing of the tenant's flattening stays in the map"
    );
    assert_eq!(victims_part(&tight), victims_part(&alone));
}
