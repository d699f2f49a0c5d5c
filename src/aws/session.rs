//! What Tessera puts into an STS `AssumeRole` call, made valid and checked
//! here, before any AWS call: a request that AWS would refuse is refused
//! locally with a message naming the field, instead of spending a round
//! trip (and a CloudTrail entry) on it.
//!
//! Everything here is pure and deterministic: the same user always gets the
//! same session name and source identity, so CloudTrail entries of one user
//! can be joined over time.

use std::collections::HashSet;
use std::sync::OnceLock;

use serde_json::{json, Value};

/// AWS's shortest `DurationSeconds` (15 minutes).
pub const DURATION_MIN: i32 = 900;
/// AWS's longest `DurationSeconds` (12 hours, the role's own maximum can be
/// lower; STS refuses a longer request).
pub const DURATION_MAX: i32 = 43_200;
/// AWS's limit on the plaintext inline session policy, in characters.
pub const POLICY_MAX_CHARS: usize = 2048;
/// Most session tags per `AssumeRole`.
pub const TAGS_MAX: usize = 50;
/// Longest tag key and value, in characters (counted as UTF-16 units, the
/// stricter of the ways AWS may count).
pub const TAG_KEY_MAX: usize = 128;
pub const TAG_VALUE_MAX: usize = 256;

/// Hex digits of SHA-256(user) appended when a name had to be changed.
/// 16 digits (64 bits): two distinct users colliding is out of reach.
const HASH_HEX: usize = 16;

/// `RoleSessionName` for `user`: 2–64 characters of `[A-Za-z0-9_+=,.@-]`.
///
/// A user id that is already valid is kept as it is (readable in
/// CloudTrail). Otherwise every other character becomes `-`, the result is
/// cut to fit, and `-` plus 16 hex digits of SHA-256(user) are appended, so
/// `a b` and `a-b` or two long ids sharing a prefix never get the same name.
/// A valid id that itself ends like such a suffix (`-` and 16 lowercase hex
/// digits) is treated as changed too, so a user cannot pick an id equal to
/// another user's derived name.
pub fn session_name(user: &str) -> String {
    sanitize(user, false)
}

/// `SourceIdentity` for `user`: the same rules as [`session_name`], and it
/// never starts with `aws:` (reserved by AWS; `:` is not in the allowed set
/// anyway, so this only guards against a change of that set).
pub fn source_identity(user: &str) -> String {
    sanitize(user, true)
}

fn sts_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

fn user_hash(user: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, user.as_bytes());
    hex::encode(digest.as_ref())[..HASH_HEX].to_string()
}

fn looks_hashed(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() > HASH_HEX
        && b[b.len() - HASH_HEX - 1] == b'-'
        && b[b.len() - HASH_HEX..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

fn sanitize(user: &str, source_identity: bool) -> String {
    const MIN: usize = 2;
    const MAX: usize = 64;
    let mut out: String = user
        .chars()
        .map(|c| if sts_name_char(c) { c } else { '-' })
        .collect();
    let mut changed = out != user || out.len() < MIN || out.len() > MAX || looks_hashed(&out);
    if source_identity && out.len() >= 4 && out[..4].eq_ignore_ascii_case("aws:") {
        out.insert_str(0, "u-");
        changed = true;
    }
    if !changed {
        return out;
    }
    // All characters are ASCII now, so byte lengths are character counts.
    out.truncate(MAX - HASH_HEX - 1);
    if out.is_empty() {
        out.push('u');
    }
    out.push('-');
    out.push_str(&user_hash(user));
    out
}

fn tag_char_regex() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    // AWS's pattern for session tag keys and values.
    RE.get_or_init(|| regex::Regex::new(r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]$").expect("valid regex"))
}

fn tag_char(c: char) -> bool {
    let mut buf = [0u8; 4];
    tag_char_regex().is_match(c.encode_utf8(&mut buf))
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

fn reserved_prefix(s: &str) -> bool {
    s.len() >= 4 && s.is_char_boundary(4) && s[..4].eq_ignore_ascii_case("aws:")
}

/// Checks session tags and transitive tag keys against AWS's rules: at most
/// 50 tags, keys of 1–128 and values of 0–256 characters from
/// `[\p{L}\p{Z}\p{N}_.:/=+\-@]`, no key or value starting with the reserved
/// `aws:`, keys unique ignoring case (AWS treats them so), and every
/// transitive key one of the tag keys.
pub fn validate_tags(tags: &[(String, String)], transitive: &[String]) -> Result<(), String> {
    if tags.len() > TAGS_MAX {
        return Err(format!(
            "{} session tags, at most {TAGS_MAX} allowed",
            tags.len()
        ));
    }
    let mut keys = HashSet::new();
    for (key, value) in tags {
        let key_len = utf16_len(key);
        if key_len == 0 || key_len > TAG_KEY_MAX {
            return Err(format!(
                "tag key {key:?} must be 1 to {TAG_KEY_MAX} characters"
            ));
        }
        if utf16_len(value) > TAG_VALUE_MAX {
            return Err(format!(
                "value of tag {key:?} is longer than {TAG_VALUE_MAX} characters"
            ));
        }
        if let Some(c) = key.chars().find(|c| !tag_char(*c)) {
            return Err(format!(
                "tag key {key:?} has a character AWS does not allow ({c:?})"
            ));
        }
        if let Some(c) = value.chars().find(|c| !tag_char(*c)) {
            return Err(format!(
                "value of tag {key:?} has a character AWS does not allow ({c:?})"
            ));
        }
        if reserved_prefix(key) || reserved_prefix(value) {
            return Err(format!("tag {key:?}: the prefix aws: is reserved by AWS"));
        }
        if !keys.insert(key.to_lowercase()) {
            return Err(format!(
                "tag key {key:?} appears twice (keys are case-insensitive)"
            ));
        }
    }
    for key in transitive {
        if !keys.contains(&key.to_lowercase()) {
            return Err(format!("transitive tag key {key:?} is not one of the tags"));
        }
    }
    Ok(())
}

/// Makes an arbitrary string a valid tag value, injectively: two distinct
/// strings never get the same value, so a policy keyed on a tag (say
/// `${aws:PrincipalTag/tessera-user}`) cannot confuse two users.
///
/// - A string that is already a valid value and does not start with `=` is
///   kept as it is (readable in CloudTrail and in policies).
/// - Otherwise it becomes `=` and its base64url (no padding) when that fits
///   in 256 characters (user ids up to 190 bytes),
/// - and otherwise `=.` and the hex SHA-256 of it.
///
/// Base64url digits never include `.`, so the three forms cannot meet.
/// The exact value always goes into the audit record too.
pub fn tag_value(s: &str) -> String {
    use base64::Engine as _;
    let verbatim = !s.starts_with('=')
        && !reserved_prefix(s)
        && utf16_len(s) <= TAG_VALUE_MAX
        && s.chars().all(tag_char);
    if verbatim {
        return s.to_string();
    }
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes());
    if encoded.len() < TAG_VALUE_MAX {
        return format!("={encoded}");
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    format!("=.{}", hex::encode(digest.as_ref()))
}

/// The Glue/S3 resources of one dataset, which the session policy narrows
/// the role's permissions to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetScope {
    /// The AWS partition (`aws`, `aws-cn`, `aws-us-gov`), from the role ARN.
    pub partition: String,
    pub region: String,
    /// The AWS account of the Glue catalog, taken from the role ARN.
    pub account: String,
    pub glue_database: String,
    /// `None`: every table of the database.
    pub glue_table: Option<String>,
    /// `s3://bucket/prefix/` (the trailing `/` is required, so that
    /// `s3://b/data/` does not also cover `s3://b/database/`); `s3://bucket/`
    /// for a whole bucket.
    pub s3_prefix: String,
}

/// The registry's permission: one type from the CLI to the session policy.
pub use crate::store::Permission;

/// The AWS account id in a role ARN (`arn:aws:iam::123456789012:role/x`).
pub fn account_of_role_arn(role_arn: &str) -> Option<&str> {
    role_arn_parts(role_arn).map(|(_, account)| account)
}

/// The partition and account of a role ARN
/// (`arn:PARTITION:iam::ACCOUNT:role/NAME`), `None` if it is not one.
pub fn role_arn_parts(role_arn: &str) -> Option<(&str, &str)> {
    let mut parts = role_arn.splitn(6, ':');
    let (arn, partition, service, _region, account) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let resource = parts.next()?;
    (arn == "arn"
        && is_partition(partition)
        && service == "iam"
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.len() > "role/".len()
        && resource.starts_with("role/"))
    .then_some((partition, account))
}

/// `aws`, `aws-cn`, `aws-us-gov`, `aws-iso`…: what may stand between `arn:`
/// and the service in an ARN Tessera writes.
fn is_partition(p: &str) -> bool {
    p.starts_with("aws") && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
}

/// Glue database and table names: lowercase letters, digits, `_` and `-`.
/// Anything else is refused rather than escaped: `*` or `?` would widen the
/// policy (IAM wildcards), `/` would name another resource, and Glue keeps
/// names in lowercase, so an uppercase one would match neither its ARNs nor
/// Lake Formation's listing.
fn glue_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!("{what} {name:?} must be 1-255 of a-z 0-9 _ -"));
    }
    Ok(())
}

/// Splits `s3://bucket/prefix/` into `("bucket", "prefix/")`.
fn split_s3(s3: &str) -> Result<(&str, &str), String> {
    let rest = s3
        .strip_prefix("s3://")
        .ok_or_else(|| format!("S3 location {s3:?} must start with s3://"))?;
    let (bucket, prefix) = rest
        .split_once('/')
        .ok_or_else(|| format!("S3 location {s3:?} must be s3://bucket/ or s3://bucket/prefix/"))?;
    if bucket.len() < 3
        || bucket.len() > 63
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(format!("S3 bucket {bucket:?} is not a valid bucket name"));
    }
    if !(prefix.is_empty() || prefix.ends_with('/')) {
        return Err(format!("S3 prefix of {s3:?} must end with /"));
    }
    // IAM wildcards and policy variables would widen the grant; control
    // characters have no business in a key prefix.
    if prefix.starts_with('/')
        || prefix.contains("//")
        || prefix
            .chars()
            .any(|c| c.is_control() || matches!(c, '*' | '?' | '$'))
    {
        return Err(format!(
            "S3 prefix of {s3:?} has characters that are not allowed"
        ));
    }
    Ok((bucket, prefix))
}

/// Why no session policy could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The dataset's (or the region's) settings cannot make a safe policy.
    #[error("{0}")]
    Invalid(String),
    /// The policy would be longer than AWS accepts.
    #[error("{0}")]
    TooLarge(String),
}

/// Checks a dataset's AWS settings as the session policy will use them:
/// the role ARN, the Glue names and the S3 location. Run when a dataset is
/// registered, so a dataset that cannot be served is refused then.
pub fn check_dataset_resources(
    role_arn: &str,
    glue_database: &str,
    glue_table: Option<&str>,
    s3_prefix: &str,
) -> Result<(), String> {
    role_arn_parts(role_arn).ok_or_else(|| {
        format!("role ARN {role_arn:?} must look like arn:aws:iam::123456789012:role/NAME")
    })?;
    glue_name("Glue database", glue_database)?;
    if let Some(table) = glue_table {
        glue_name("Glue table", table)?;
    }
    split_s3(s3_prefix)?;
    Ok(())
}

/// The inline session policy that narrows the dataset's role to its Glue
/// database (or table) and S3 prefix, for reading or for writing (which
/// includes reading, multipart uploads and their clean-up). Compact JSON.
///
/// The effective permissions are the intersection of this and the role's
/// own policies (and Lake Formation's grants), so this can only narrow.
pub fn session_policy(scope: &DatasetScope, permission: Permission) -> Result<String, PolicyError> {
    use PolicyError::Invalid;
    if !is_partition(&scope.partition) {
        return Err(Invalid(format!(
            "partition {:?} is not an AWS partition",
            scope.partition
        )));
    }
    if scope.region.is_empty()
        || !scope
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Invalid(format!(
            "region {:?} is not a valid AWS region",
            scope.region
        )));
    }
    if scope.account.len() != 12 || !scope.account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid(format!(
            "account {:?} must be 12 digits",
            scope.account
        )));
    }
    glue_name("Glue database", &scope.glue_database).map_err(Invalid)?;
    if let Some(table) = &scope.glue_table {
        glue_name("Glue table", table).map_err(Invalid)?;
    }
    let (bucket, prefix) = split_s3(&scope.s3_prefix).map_err(Invalid)?;

    let partition = &scope.partition;
    let glue = format!("arn:{partition}:glue:{}:{}", scope.region, scope.account);
    let db = &scope.glue_database;
    let table = scope.glue_table.as_deref().unwrap_or("*");
    let glue_resources = json!([
        format!("{glue}:catalog"),
        format!("{glue}:database/{db}"),
        format!("{glue}:table/{db}/{table}"),
    ]);
    let mut glue_actions = vec![
        "glue:GetDatabase",
        "glue:GetTable",
        "glue:GetTables",
        "glue:GetPartition",
        "glue:GetPartitions",
    ];
    let mut object_actions = vec!["s3:GetObject"];
    if permission == Permission::Write {
        glue_actions.extend([
            "glue:BatchCreatePartition",
            "glue:CreatePartition",
            "glue:UpdatePartition",
            "glue:DeletePartition",
            "glue:BatchDeletePartition",
        ]);
        object_actions.extend([
            "s3:PutObject",
            "s3:DeleteObject",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
        ]);
    }
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Glue", "Effect": "Allow", "Action": glue_actions, "Resource": glue_resources},
            {"Sid": "Objects", "Effect": "Allow", "Action": object_actions,
             "Resource": format!("arn:{partition}:s3:::{bucket}/{prefix}*")},
            {"Sid": "List", "Effect": "Allow", "Action": "s3:ListBucket",
             "Resource": format!("arn:{partition}:s3:::{bucket}"),
             "Condition": {"StringLike": {"s3:prefix": [format!("{prefix}*")]}}},
            {"Sid": "LakeFormation", "Effect": "Allow", "Action": "lakeformation:GetDataAccess",
             "Resource": "*"},
        ],
    });
    check_policy(&policy_text(&policy)).map_err(PolicyError::TooLarge)
}

fn policy_text(policy: &Value) -> String {
    serde_json::to_string(policy).expect("a JSON value serializes")
}

fn check_policy(text: &str) -> Result<String, String> {
    let len = text.chars().count();
    if len > POLICY_MAX_CHARS {
        return Err(format!(
            "session policy is {len} characters, AWS accepts at most {POLICY_MAX_CHARS}"
        ));
    }
    Ok(text.to_string())
}

/// `DurationSeconds` for a request: what was asked (the dataset's maximum
/// when nothing was), never more than `dataset_max` and never below AWS's
/// 900-second minimum (the only case where it exceeds what was asked). Also
/// never above AWS's 12 hours.
pub fn duration(asked: Option<i64>, dataset_max: i64) -> i32 {
    let max = dataset_max.clamp(DURATION_MIN as i64, DURATION_MAX as i64);
    asked.unwrap_or(max).clamp(DURATION_MIN as i64, max) as i32
}

/// Every local check of an `AssumeRole` request, run by
/// [`crate::aws::AwsBroker`] before it sends anything: names, tags, policy
/// size and duration as AWS would check them.
pub fn validate_request(req: &crate::aws::AssumeRequest) -> Result<(), String> {
    if !req.role_arn.starts_with("arn:") || req.role_arn.len() < 20 || req.role_arn.len() > 2048 {
        return Err(format!("RoleArn {:?} is not an ARN", req.role_arn));
    }
    let name_ok = |s: &str| (2..=64).contains(&s.len()) && s.chars().all(sts_name_char);
    if !name_ok(&req.session_name) {
        return Err(format!(
            "RoleSessionName {:?} is not 2-64 of [\\w+=,.@-]",
            req.session_name
        ));
    }
    if !req.source_identity.is_empty()
        && (!name_ok(&req.source_identity) || reserved_prefix(&req.source_identity))
    {
        return Err(format!(
            "SourceIdentity {:?} is not 2-64 of [\\w+=,.@-] or starts with aws:",
            req.source_identity
        ));
    }
    validate_tags(&req.tags, &req.transitive_tag_keys)?;
    if !req.policy.is_empty() {
        check_policy(&req.policy)?;
    }
    if !(DURATION_MIN..=DURATION_MAX).contains(&req.duration_secs) {
        return Err(format!(
            "DurationSeconds {} is not within {DURATION_MIN}..={DURATION_MAX}",
            req.duration_secs
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_name(s: &str) -> bool {
        (2..=64).contains(&s.len()) && s.chars().all(sts_name_char)
    }

    #[test]
    fn valid_user_ids_are_kept_as_they_are() {
        for user in ["alice", "alice@example.com", "a.b+c=d,e_f-g", "ab"] {
            assert_eq!(session_name(user), user);
            assert_eq!(source_identity(user), user);
        }
    }

    #[test]
    fn changed_ids_get_a_hash_suffix() {
        let s = session_name("Alice Smith");
        assert!(s.starts_with("Alice-Smith-"), "{s}");
        assert_eq!(s.len(), "Alice-Smith-".len() + HASH_HEX);
        assert!(valid_name(&s));
        // Spaces vs. dashes, and unicode: never the same name.
        assert_ne!(session_name("a b"), session_name("a-b"));
        assert_ne!(session_name("a b"), session_name("a_b"));
        assert_ne!(session_name("jürgen"), session_name("jörgen"));
        assert!(valid_name(&session_name("jürgen")));
        assert!(valid_name(&session_name("用户")));
        assert!(valid_name(&session_name("😀")));
    }

    #[test]
    fn short_and_empty_ids_are_padded() {
        for user in ["", "a", "-"] {
            let s = session_name(user);
            assert!(valid_name(&s), "{user:?} -> {s:?}");
            assert!(valid_name(&source_identity(user)));
        }
        assert_ne!(session_name(""), session_name("a"));
    }

    #[test]
    fn long_ids_are_cut_and_stay_distinct() {
        let a = "x".repeat(99) + "a";
        let b = "x".repeat(99) + "b";
        assert_eq!(a.len(), 100);
        let (sa, sb) = (session_name(&a), session_name(&b));
        assert_eq!(sa.len(), 64);
        assert!(valid_name(&sa) && valid_name(&sb));
        assert_ne!(sa, sb);
        assert_eq!(sa, session_name(&a), "deterministic");
        // Exactly 64 valid characters is kept.
        assert_eq!(session_name(&"y".repeat(64)), "y".repeat(64));
        assert_eq!(session_name(&"y".repeat(65)).len(), 64);
    }

    #[test]
    fn an_id_cannot_impersonate_a_derived_name() {
        let derived = session_name("a b");
        assert!(valid_name(&derived));
        // Someone whose id is literally the derived name gets another name.
        assert_ne!(session_name(&derived), derived);
        assert_ne!(source_identity(&derived), source_identity("a b"));
    }

    #[test]
    fn source_identity_never_starts_with_aws() {
        for user in ["aws:alice", "AWS:alice", "Aws:x"] {
            let s = source_identity(user);
            assert!(!s.to_ascii_lowercase().starts_with("aws:"), "{s}");
            assert!(valid_name(&s), "{s}");
        }
        assert_ne!(source_identity("aws:alice"), source_identity("aws-alice"));
        assert_eq!(source_identity("aws-alice"), "aws-alice");
    }

    fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tags_follow_aws_rules() {
        let ok = tags(&[
            ("user", "alice@example.com"),
            ("service", "svc:reports/v2"),
            ("purpose", "fraud detection"),
            ("tenant", "Zürich_1"),
            ("empty", ""),
        ]);
        validate_tags(&ok, &["user".into(), "TENANT".into()]).unwrap();

        let bad: Vec<(Vec<(String, String)>, Vec<String>, &str)> = vec![
            (tags(&[("", "v")]), vec![], "1 to 128"),
            (tags(&[(&"k".repeat(129), "v")]), vec![], "1 to 128"),
            (tags(&[("k", &"v".repeat(257))]), vec![], "longer"),
            (tags(&[("k!", "v")]), vec![], "not allow"),
            (tags(&[("k", "v\n")]), vec![], "not allow"),
            (tags(&[("k", "a*b")]), vec![], "not allow"),
            (tags(&[("aws:user", "v")]), vec![], "reserved"),
            (tags(&[("AWS:user", "v")]), vec![], "reserved"),
            (tags(&[("k", "aws:x")]), vec![], "reserved"),
            (tags(&[("User", "a"), ("user", "b")]), vec![], "twice"),
            (tags(&[("user", "a")]), vec!["tenant".into()], "transitive"),
        ];
        for (t, tr, want) in bad {
            let e = validate_tags(&t, &tr).unwrap_err();
            assert!(e.contains(want), "{t:?}: {e}");
        }
        let many: Vec<(String, String)> = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(validate_tags(&many, &[])
            .unwrap_err()
            .contains("at most 50"));
        validate_tags(&many[..50], &[]).unwrap();
        // 128 astral characters are 256 UTF-16 units: refused, to be safe.
        assert!(validate_tags(&tags(&[(&"𝔸".repeat(128), "v")]), &[]).is_err());
    }

    #[test]
    fn tag_value_makes_any_string_valid() {
        for s in [
            "alice smith",
            "a*b?c\"d\n",
            "aws:root",
            "AWS:root",
            "=already",
            &"é".repeat(300),
            &"😀".repeat(200),
            &"𝔸".repeat(200),
            &"x".repeat(257),
            "",
        ] {
            let v = tag_value(s);
            validate_tags(&[("k".into(), v.clone())], &[]).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        }
        assert_eq!(tag_value("alice smith"), "alice smith");
        assert_eq!(tag_value("alice@example.com"), "alice@example.com");
        assert_eq!(tag_value(""), "");
        assert_eq!(tag_value("a*b"), "=YSpi");
        assert_eq!(tag_value("aws:x"), "=YXdzOng");
        assert_eq!(tag_value("=x"), "=PXg");
        let long = tag_value(&"é".repeat(300));
        assert!(long.starts_with("=.") && long.len() == 66, "{long}");
    }

    #[test]
    fn tag_values_of_distinct_strings_never_meet() {
        // Each pair would meet under a lossy mapping (replace, cut, prefix).
        let pairs = [
            ("a*b", "a_b"),
            ("a*b", "a?b"),
            ("aws:x", "u-aws:x"),
            ("=YSpi", "a*b"),
            (&"x".repeat(300) as &str, &"x".repeat(301) as &str),
            (
                &format!("{}*", "y".repeat(200)),
                &format!("{}?", "y".repeat(200)),
            ),
        ];
        for (a, b) in pairs {
            assert_ne!(tag_value(a), tag_value(b), "{a:?} / {b:?}");
        }
    }

    fn scope(table: Option<&str>) -> DatasetScope {
        DatasetScope {
            partition: "aws".into(),
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            glue_database: "sales".into(),
            glue_table: table.map(String::from),
            s3_prefix: "s3://data-lake/sales/orders/".into(),
        }
    }

    #[test]
    fn read_policy_names_the_dataset_resources() {
        let text = session_policy(&scope(Some("orders")), Permission::Read).unwrap();
        assert!(
            !text.contains(' ') && !text.contains('\n'),
            "compact: {text}"
        );
        let p: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(p["Version"], "2012-10-17");
        let st = p["Statement"].as_array().unwrap();
        let glue = &st[0];
        assert_eq!(
            glue["Resource"],
            json!([
                "arn:aws:glue:eu-west-1:123456789012:catalog",
                "arn:aws:glue:eu-west-1:123456789012:database/sales",
                "arn:aws:glue:eu-west-1:123456789012:table/sales/orders",
            ])
        );
        assert_eq!(
            glue["Action"],
            json!([
                "glue:GetDatabase",
                "glue:GetTable",
                "glue:GetTables",
                "glue:GetPartition",
                "glue:GetPartitions"
            ])
        );
        assert_eq!(st[1]["Action"], json!(["s3:GetObject"]));
        assert_eq!(st[1]["Resource"], "arn:aws:s3:::data-lake/sales/orders/*");
        assert_eq!(st[2]["Action"], "s3:ListBucket");
        assert_eq!(st[2]["Resource"], "arn:aws:s3:::data-lake");
        assert_eq!(
            st[2]["Condition"],
            json!({"StringLike": {"s3:prefix": ["sales/orders/*"]}})
        );
        assert_eq!(st[3]["Action"], "lakeformation:GetDataAccess");
        assert_eq!(st[3]["Resource"], "*");
        assert!(!text.contains("PutObject") && !text.contains("CreatePartition"));
    }

    #[test]
    fn write_policy_adds_object_and_partition_writes() {
        let text = session_policy(&scope(None), Permission::Write).unwrap();
        let p: Value = serde_json::from_str(&text).unwrap();
        let st = p["Statement"].as_array().unwrap();
        assert_eq!(
            st[0]["Resource"][2],
            "arn:aws:glue:eu-west-1:123456789012:table/sales/*"
        );
        for a in [
            "glue:BatchCreatePartition",
            "glue:CreatePartition",
            "glue:UpdatePartition",
            "glue:DeletePartition",
            "glue:BatchDeletePartition",
        ] {
            assert!(
                st[0]["Action"].as_array().unwrap().contains(&json!(a)),
                "{a}"
            );
        }
        assert_eq!(
            st[1]["Action"],
            json!([
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts"
            ])
        );
        assert!(text.len() <= POLICY_MAX_CHARS);
    }

    #[test]
    fn whole_bucket_scope() {
        let mut s = scope(None);
        s.s3_prefix = "s3://data-lake/".into();
        let p: Value =
            serde_json::from_str(&session_policy(&s, Permission::Read).unwrap()).unwrap();
        assert_eq!(p["Statement"][1]["Resource"], "arn:aws:s3:::data-lake/*");
        assert_eq!(
            p["Statement"][2]["Condition"]["StringLike"]["s3:prefix"][0],
            "*"
        );
    }

    #[test]
    fn malformed_scopes_are_refused() {
        let cases: Vec<(Box<dyn Fn(&mut DatasetScope)>, &str)> = vec![
            (Box::new(|s| s.glue_database = "*".into()), "Glue database"),
            (
                Box::new(|s| s.glue_table = Some("orders*".into())),
                "Glue table",
            ),
            (
                Box::new(|s| s.glue_table = Some("a/b".into())),
                "Glue table",
            ),
            (Box::new(|s| s.account = "12345".into()), "account"),
            (Box::new(|s| s.region = "EU West".into()), "region"),
            (Box::new(|s| s.s3_prefix = "https://x/".into()), "s3://"),
            (
                Box::new(|s| s.s3_prefix = "s3://data-lake/sales".into()),
                "end with /",
            ),
            (
                Box::new(|s| s.s3_prefix = "s3://data-lake".into()),
                "s3://bucket/",
            ),
            (
                Box::new(|s| s.s3_prefix = "s3://data-lake/a*/".into()),
                "not allowed",
            ),
            (
                Box::new(|s| s.s3_prefix = "s3://data-lake/${aws:username}/".into()),
                "not allowed",
            ),
            (
                Box::new(|s| s.s3_prefix = "s3://Data_Lake/x/".into()),
                "bucket",
            ),
        ];
        for (change, want) in cases {
            let mut s = scope(Some("orders"));
            change(&mut s);
            let e = session_policy(&s, Permission::Read).unwrap_err();
            assert!(matches!(e, PolicyError::Invalid(_)), "{s:?}: {e:?}");
            assert!(e.to_string().contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn oversized_policy_is_refused_before_any_call() {
        let mut s = scope(Some(&"t".repeat(255)));
        s.glue_database = "d".repeat(255);
        s.s3_prefix = format!("s3://data-lake/{}/", "p".repeat(900));
        let e = session_policy(&s, Permission::Write).unwrap_err();
        assert!(matches!(e, PolicyError::TooLarge(_)), "{e:?}");
        assert!(e.to_string().contains("at most 2048"), "{e}");
    }

    #[test]
    fn durations_are_clamped() {
        assert_eq!(duration(None, 3600), 3600);
        assert_eq!(duration(Some(1800), 3600), 1800);
        assert_eq!(duration(Some(7200), 3600), 3600);
        assert_eq!(duration(Some(60), 3600), DURATION_MIN);
        assert_eq!(duration(Some(-5), 3600), DURATION_MIN);
        assert_eq!(duration(None, 100), DURATION_MIN);
        assert_eq!(duration(Some(100_000), 100_000), DURATION_MAX);
        assert_eq!(duration(Some(i64::MAX), i64::MAX), DURATION_MAX);
        assert_eq!(duration(Some(1000), 900), 900);
    }

    #[test]
    fn role_arn_account() {
        assert_eq!(
            account_of_role_arn("arn:aws:iam::123456789012:role/data/sales-reader"),
            Some("123456789012")
        );
        assert_eq!(account_of_role_arn("arn:aws:iam::12345:role/x"), None);
        assert_eq!(
            account_of_role_arn("arn:aws:iam::123456789012:user/x"),
            None
        );
        assert_eq!(account_of_role_arn("nonsense"), None);
    }

    #[test]
    fn requests_are_checked_as_a_whole() {
        let ok = crate::aws::AssumeRequest {
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            session_name: session_name("alice"),
            source_identity: source_identity("alice"),
            tags: tags(&[("user", "alice")]),
            transitive_tag_keys: vec!["user".into()],
            policy: session_policy(&scope(None), Permission::Read).unwrap(),
            duration_secs: 900,
        };
        validate_request(&ok).unwrap();
        let mut r = ok.clone();
        r.session_name = "a b".into();
        assert!(validate_request(&r)
            .unwrap_err()
            .contains("RoleSessionName"));
        let mut r = ok.clone();
        r.source_identity = "x".repeat(65);
        assert!(validate_request(&r).unwrap_err().contains("SourceIdentity"));
        let mut r = ok.clone();
        r.duration_secs = 899;
        assert!(validate_request(&r)
            .unwrap_err()
            .contains("DurationSeconds"));
        let mut r = ok.clone();
        r.policy = "x".repeat(2049);
        assert!(validate_request(&r).unwrap_err().contains("2048"));
        let mut r = ok.clone();
        r.role_arn = "role".into();
        assert!(validate_request(&r).unwrap_err().contains("RoleArn"));
        let mut r = ok;
        r.transitive_tag_keys = vec!["tenant".into()];
        assert!(validate_request(&r).unwrap_err().contains("transitive"));
    }
}
