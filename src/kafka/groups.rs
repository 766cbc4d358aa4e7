//! Kafka's group APIs (classic protocol): JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, each calling the
//! service with the connection's principal.

use bytes::Bytes;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName, delete_groups_response,
    describe_groups_response, join_group_response, leave_group_response, list_groups_response, offset_commit_response,
    offset_fetch_response,
};
use kafka_protocol::protocol::StrBytes;

use super::errors::{self, code};
use crate::error::Error;
use crate::service::kafka_groups::{ClassicError, JoinRequest};
use crate::service::{RequestCtx, Service};

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// What a classic group error is called in Kafka.
pub fn classic_code(e: &ClassicError) -> i16 {
    match e {
        ClassicError::UnknownMemberId => errors::UNKNOWN_MEMBER_ID,
        ClassicError::IllegalGeneration { .. } => errors::ILLEGAL_GENERATION,
        ClassicError::RebalanceInProgress => errors::REBALANCE_IN_PROGRESS,
        ClassicError::InconsistentGroupProtocol | ClassicError::UsedByGregor => errors::INCONSISTENT_GROUP_PROTOCOL,
        ClassicError::MemberIdRequired(_) => errors::MEMBER_ID_REQUIRED,
        ClassicError::FencedInstanceId => errors::FENCED_INSTANCE_ID,
        ClassicError::InvalidSessionTimeout(_) => errors::INVALID_SESSION_TIMEOUT,
        ClassicError::NonEmptyGroup => errors::NON_EMPTY_GROUP,
        ClassicError::GroupIdNotFound => errors::GROUP_ID_NOT_FOUND,
        ClassicError::Other(e) => group_code(e),
    }
}

/// A gregor error in a group API: as elsewhere, except that what makes a client look for
/// the coordinator again says so.
fn group_code(e: &Error) -> i16 {
    match e {
        Error::InvalidGroupId(_) => errors::INVALID_GROUP_ID,
        Error::ShuttingDown => errors::NOT_COORDINATOR,
        Error::UnknownGroup(_) => errors::GROUP_ID_NOT_FOUND,
        Error::GroupNotEmpty(_) => errors::NON_EMPTY_GROUP,
        Error::GroupProtocolConflict(_) => errors::INCONSISTENT_GROUP_PROTOCOL,
        other => code(other),
    }
}

pub async fn join_group(
    req: JoinGroupRequest,
    version: i16,
    client_id: &str,
    service: &Service,
    ctx: &RequestCtx,
    peer: &str,
) -> JoinGroupResponse {
    let group = req.group_id.0.to_string();
    let session = req.session_timeout_ms.max(0) as u64;
    // v0 has no rebalance timeout: the session timeout serves as both.
    let rebalance = if version >= 1 { req.rebalance_timeout_ms.max(0) as u64 } else { session };
    let join = JoinRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|i| i.to_string()),
        client_id: client_id.to_owned(),
        client_host: peer.to_owned(),
        session_timeout_ms: session,
        rebalance_timeout_ms: rebalance,
        protocol_type: req.protocol_type.to_string(),
        protocols: req.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
        require_known_member_id: version >= 4,
    };
    match service.kafka_join_group(ctx, &group, join).await {
        Ok(r) => JoinGroupResponse::default()
            .with_generation_id(r.generation)
            .with_protocol_type(Some(s(r.protocol_type)))
            .with_protocol_name(Some(s(r.protocol)))
            .with_leader(s(r.leader))
            .with_member_id(s(r.member_id))
            .with_members(
                r.members
                    .into_iter()
                    .map(|(id, instance, metadata)| {
                        join_group_response::JoinGroupResponseMember::default()
                            .with_member_id(s(id))
                            .with_group_instance_id(instance.map(s))
                            .with_metadata(metadata)
                    })
                    .collect(),
            ),
        Err(e) => {
            let member_id = match &e {
                ClassicError::MemberIdRequired(id) => id.clone(),
                _ => String::new(),
            };
            JoinGroupResponse::default()
                .with_error_code(classic_code(&e))
                .with_generation_id(-1)
                .with_protocol_name(if version >= 7 { None } else { Some(s("")) })
                .with_member_id(s(member_id))
        }
    }
}

pub async fn sync_group(req: SyncGroupRequest, service: &Service, ctx: &RequestCtx) -> SyncGroupResponse {
    let group = req.group_id.0.to_string();
    let assignments: Vec<(String, Bytes)> =
        req.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let answer = service.kafka_sync_group(ctx, &group, &req.member_id, req.generation_id, assignments).await;
    match answer {
        Ok(assignment) => SyncGroupResponse::default()
            .with_protocol_type(req.protocol_type)
            .with_protocol_name(req.protocol_name)
            .with_assignment(assignment),
        Err(e) => SyncGroupResponse::default().with_error_code(classic_code(&e)),
    }
}

pub async fn heartbeat(req: HeartbeatRequest, service: &Service, ctx: &RequestCtx) -> HeartbeatResponse {
    let group = req.group_id.0.to_string();
    match service.kafka_heartbeat(ctx, &group, &req.member_id, req.generation_id).await {
        Ok(()) => HeartbeatResponse::default(),
        Err(e) => HeartbeatResponse::default().with_error_code(classic_code(&e)),
    }
}

pub async fn leave_group(
    req: LeaveGroupRequest,
    version: i16,
    service: &Service,
    ctx: &RequestCtx,
) -> LeaveGroupResponse {
    let group = req.group_id.0.to_string();
    // v0-2 name one member; v3+ a list (with instance ids).
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|i| i.to_string())))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    match service.kafka_leave_group(ctx, &group, &members).await {
        Ok(outcomes) if version >= 3 => {
            let responses = members
                .into_iter()
                .zip(outcomes)
                .map(|((id, instance), outcome)| {
                    let response = leave_group_response::MemberResponse::default()
                        .with_member_id(s(id))
                        .with_group_instance_id(instance.map(s));
                    match outcome {
                        Ok(()) => response,
                        Err(e) => response.with_error_code(classic_code(&e)),
                    }
                })
                .collect();
            LeaveGroupResponse::default().with_members(responses)
        }
        Ok(outcomes) => match outcomes.into_iter().next() {
            Some(Err(e)) => LeaveGroupResponse::default().with_error_code(classic_code(&e)),
            _ => LeaveGroupResponse::default(),
        },
        Err(e) => LeaveGroupResponse::default().with_error_code(classic_code(&e)),
    }
}

pub async fn offset_commit(req: OffsetCommitRequest, service: &Service, ctx: &RequestCtx) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    // (topic, partition, offset) to commit; refused ones answered directly.
    let mut refused: Vec<(String, i32, i16)> = Vec::new();
    let mut offsets = Vec::new();
    for t in &req.topics {
        let topic = t.name.0.to_string();
        for p in &t.partitions {
            match (u32::try_from(p.partition_index), u64::try_from(p.committed_offset)) {
                (Ok(index), Ok(offset)) => offsets.push((topic.clone(), index, offset)),
                (Err(_), _) => refused.push((topic.clone(), p.partition_index, errors::UNKNOWN_TOPIC_OR_PARTITION)),
                (_, Err(_)) => refused.push((topic.clone(), p.partition_index, errors::INVALID_REQUEST)),
            }
        }
    }
    let results: Vec<(String, i32, i16)> =
        match service.kafka_commit(ctx, &group, &req.member_id, req.generation_id_or_member_epoch, &offsets).await {
            Ok(outcome) => outcome
                .into_iter()
                .map(|(t, p, r)| (t, p as i32, r.as_ref().map_or_else(code, |_| errors::NONE)))
                .collect(),
            Err(e) => {
                let c = classic_code(&e);
                offsets.into_iter().map(|(t, p, _)| (t, p as i32, c)).collect()
            }
        };
    // Answer in the request's order, topic by topic.
    let mut topics: Vec<offset_commit_response::OffsetCommitResponseTopic> = Vec::new();
    for (t, p, c) in results.into_iter().chain(refused) {
        let partition =
            offset_commit_response::OffsetCommitResponsePartition::default().with_partition_index(p).with_error_code(c);
        match topics.iter_mut().find(|x| x.name.0.as_str() == t) {
            Some(x) => x.partitions.push(partition),
            None => topics.push(
                offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_name(TopicName(s(t)))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

pub async fn offset_fetch(req: OffsetFetchRequest, service: &Service, ctx: &RequestCtx) -> OffsetFetchResponse {
    let group = req.group_id.0.to_string();
    let wanted: Option<Vec<(String, Vec<u32>)>> = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| {
                let parts = t.partition_indexes.iter().filter_map(|p| u32::try_from(*p).ok()).collect();
                (t.name.0.to_string(), parts)
            })
            .collect()
    });
    let partition = |index: u32, offset: Option<u64>| {
        offset_fetch_response::OffsetFetchResponsePartition::default()
            .with_partition_index(index as i32)
            .with_committed_offset(offset.map_or(-1, |o| o as i64))
            .with_committed_leader_epoch(-1)
            .with_metadata(Some(s("")))
    };
    match service.kafka_committed(ctx, &group, wanted).await {
        Ok(found) => {
            let topics = found
                .into_iter()
                .map(|(t, parts)| {
                    let partitions = match parts {
                        Ok(parts) => parts.into_iter().map(|(p, o)| partition(p, o)).collect(),
                        Err(e) => {
                            let c = code(&e);
                            let asked = req.topics.iter().flatten().filter(|x| x.name.0.as_str() == t);
                            asked
                                .flat_map(|x| x.partition_indexes.iter())
                                .map(|p| {
                                    offset_fetch_response::OffsetFetchResponsePartition::default()
                                        .with_partition_index(*p)
                                        .with_committed_offset(-1)
                                        .with_error_code(c)
                                })
                                .collect()
                        }
                    };
                    offset_fetch_response::OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(t)))
                        .with_partitions(partitions)
                })
                .collect();
            OffsetFetchResponse::default().with_topics(topics)
        }
        Err(e) => OffsetFetchResponse::default().with_error_code(group_code(&e)),
    }
}

pub async fn list_groups(req: ListGroupsRequest, service: &Service, ctx: &RequestCtx) -> ListGroupsResponse {
    match service.kafka_list_groups(ctx).await {
        Ok(groups) => {
            let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
            let listed = groups
                .into_iter()
                .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
                .map(|g| {
                    list_groups_response::ListedGroup::default()
                        .with_group_id(GroupId(s(g.group)))
                        .with_protocol_type(s(g.protocol_type))
                        .with_group_state(s(g.state))
                        .with_group_type(s("classic"))
                })
                .collect();
            ListGroupsResponse::default().with_groups(listed)
        }
        Err(e) => ListGroupsResponse::default().with_error_code(group_code(&e)),
    }
}

pub async fn describe_groups(
    req: DescribeGroupsRequest,
    service: &Service,
    ctx: &RequestCtx,
) -> DescribeGroupsResponse {
    let mut described = Vec::with_capacity(req.groups.len());
    for id in req.groups {
        let group = id.0.to_string();
        let entry = describe_groups_response::DescribedGroup::default().with_group_id(id);
        described.push(match service.kafka_describe_group(ctx, &group).await {
            // Kafka's answer for a group it does not know: Dead, no error.
            Ok(None) => entry.with_group_state(s("Dead")),
            Ok(Some(g)) => entry
                .with_group_state(s(g.state))
                .with_protocol_type(s(g.protocol_type))
                .with_protocol_data(s(g.protocol.clone()))
                .with_members(
                    g.members
                        .into_iter()
                        .map(|m| {
                            let metadata = m.protocols.iter().find(|(n, _)| *n == g.protocol).map(|(_, b)| b.clone());
                            describe_groups_response::DescribedGroupMember::default()
                                .with_member_id(s(m.id))
                                .with_group_instance_id(m.instance_id.map(s))
                                .with_client_id(s(m.client_id))
                                .with_client_host(s(m.client_host))
                                .with_member_metadata(metadata.unwrap_or_default())
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                ),
            Err(e) => entry.with_error_code(group_code(&e)).with_group_state(s("")),
        });
    }
    DescribeGroupsResponse::default().with_groups(described)
}

pub async fn delete_groups(req: DeleteGroupsRequest, service: &Service, ctx: &RequestCtx) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in req.groups_names {
        let group = id.0.to_string();
        let c = match service.delete_group(ctx, &group).await {
            Ok(()) => errors::NONE,
            Err(e) => group_code(&e),
        };
        results.push(delete_groups_response::DeletableGroupResult::default().with_group_id(id).with_error_code(c));
    }
    DeleteGroupsResponse::default().with_results(results)
}
