//! SQS fair queues: a message group on a standard destination names the tenant. The
//! real binary sends it, from `FORWARDER_MESSAGE_GROUP_ID` and from a route, and sends
//! no deduplication id (that is a FIFO queue's).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;

use crate::helpers::*;

fn system(m: &aws_sdk_sqs::types::Message, name: MessageSystemAttributeName) -> Option<String> {
    m.attributes.as_ref()?.get(&name).cloned()
}

/// Each message's group and deduplication id, by its event's organization.
fn groups_by_org(messages: &[aws_sdk_sqs::types::Message]) -> HashMap<u64, Vec<Option<String>>> {
    let mut by_org: HashMap<u64, Vec<Option<String>>> = HashMap::new();
    for m in messages {
        assert_eq!(
            system(m, MessageSystemAttributeName::MessageDeduplicationId),
            None,
            "a standard queue gets no deduplication id"
        );
        let body = m.body.as_deref().unwrap_or_default();
        let org = sqs_forwarder::event::decode(body).unwrap().organization_id;
        by_org
            .entry(org)
            .or_default()
            .push(system(m, MessageSystemAttributeName::MessageGroupId));
    }
    by_org
}

fn org_event(id: u128, project: u64, org: u64) -> String {
    format!(
        r#"{{"event_id":"{id:032x}","project_id":{project},"organization_id":{org},"tags":[["level","error"]]}}"#
    )
}

#[tokio::test]
async fn a_standard_destination_gets_each_organization_as_its_tenant() {
    let q = Queues::create(30).await;
    let bodies: Vec<String> = (1..=30u128)
        .map(|i| org_event(i, 5, 100 + (i as u64 % 3)))
        .collect();
    send_bodies(&q.client, &q.source, &bodies).await;

    // `check` accepts the group on a standard queue and says so.
    let data = std::env::temp_dir().join(unique("data"));
    let env = |cmd: &mut std::process::Command| {
        cmd.env("FORWARDER_SOURCE_QUEUE_URL", &q.source)
            .env("FORWARDER_DEST_QUEUE_URL", &q.dest)
            .env("FORWARDER_MESSAGE_GROUP_ID", "org-{organization_id}")
            .env("FORWARDER_RECEIVE_WAIT_SECONDS", "1")
            .env("FORWARDER_DATA_DIR", &data);
    };
    let mut check = binary(&["check"]);
    env(&mut check);
    let out = output_of(&mut check, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("message group org-{organization_id}"),
        "{stdout}"
    );

    let mut run = binary(&["run", "--exit-when-idle", "2"]);
    env(&mut run);
    run_ok(&mut run);

    let got = drain_messages(&q.client, &q.dest, 30, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 30);
    let by_org = groups_by_org(&got);
    assert_eq!(by_org.len(), 3);
    for (org, groups) in by_org {
        assert_eq!(groups.len(), 10);
        assert!(
            groups
                .iter()
                .all(|g| g.as_deref() == Some(&*format!("org-{org}"))),
            "{org}: {groups:?}"
        );
    }
    assert_eq!(depth(&q.client, &q.source).await, 0);
}

#[tokio::test]
async fn a_route_to_a_standard_queue_may_name_its_group() {
    let q = Queues::create(30).await;
    let fair = create_queue(&q.client, &unique("fair"), 30).await;
    let routes = routes_file(&format!(
            "[default]\nqueue_url = \"{}\"\n\n[projects.7]\nqueue_url = \"{fair}\"\nmessage_group_id = \"{{organization_id}}\"\n",
            q.dest
        ));
    let bodies: Vec<String> = (1..=8u128)
        .map(|i| org_event(i, if i % 2 == 0 { 7 } else { 8 }, 40 + (i as u64 % 2)))
        .collect();
    send_bodies(&q.client, &q.source, &bodies).await;

    run_routes(&q.source, &routes);

    // Project 7 (all of organization 40) on the fair queue, grouped by organization.
    let routed = drain_messages(&q.client, &fair, 4, Duration::from_secs(20)).await;
    assert_eq!(
        groups_by_org(&routed),
        HashMap::from([(40, vec![Some("40".to_string()); 4])])
    );
    // The default route has no group: none is sent.
    let rest = drain_messages(&q.client, &q.dest, 4, Duration::from_secs(20)).await;
    assert_eq!(groups_by_org(&rest), HashMap::from([(41, vec![None; 4])]));
}
