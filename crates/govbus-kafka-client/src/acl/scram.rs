//! SCRAM users: creating a user, or setting its password, through
//! librdkafka's AlterUserScramCredentials (KIP-554), as `kafka-configs
//! --alter --add-config 'SCRAM-SHA-512=[password=…]' --entity-type users`
//! does. librdkafka salts and hashes the password; it never leaves this
//! process in clear.

use std::ffi::{CStr, CString};

use rdkafka_sys as sys;
use sys::bindings::rd_kafka_ScramMechanism_t as Mechanism;

use super::{error_text, AclAdmin, AclError};

/// SCRAM-SHA-512's iterations (Kafka's minimum is 4,096).
const ITERATIONS: i32 = 8192;

/// The alterations of one request, destroyed together.
struct Alterations(Vec<*mut sys::bindings::rd_kafka_UserScramCredentialAlteration_t>);

impl Drop for Alterations {
    fn drop(&mut self) {
        for a in &self.0 {
            // SAFETY: each was returned by librdkafka and is freed once here.
            unsafe { sys::rd_kafka_UserScramCredentialAlteration_destroy(*a) };
        }
    }
}

impl AclAdmin {
    /// Creates each `(user, password)` as a SCRAM-SHA-512 user, or sets
    /// its password if it exists. Needs the cluster's Alter permission
    /// (a super user, such as `admin`).
    pub fn upsert_scram_users(&self, users: &[(String, String)]) -> Result<(), AclError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut alterations = Alterations(Vec::with_capacity(users.len()));
        for (user, password) in users {
            let name = CString::new(user.as_str()).map_err(|_| AclError::Nul(user.clone()))?;
            // SAFETY: the name and password outlive the call (librdkafka
            // copies both); a NULL salt asks librdkafka for a random one.
            let a = unsafe {
                sys::rd_kafka_UserScramCredentialUpsertion_new(
                    name.as_ptr(),
                    Mechanism::RD_KAFKA_SCRAM_MECHANISM_SHA_512,
                    ITERATIONS,
                    password.as_ptr(),
                    password.len(),
                    std::ptr::null(),
                    0,
                )
            };
            if a.is_null() {
                return Err(AclError::Broker {
                    call: "alter SCRAM users",
                    reason: format!("librdkafka refused the upsertion of {user}"),
                });
            }
            alterations.0.push(a);
        }
        let reply = self.call(
            "alter SCRAM users",
            sys::bindings::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS,
            // SAFETY: the alterations outlive the call (librdkafka copies them).
            |rk, opts, q| unsafe {
                sys::rd_kafka_AlterUserScramCredentials(
                    rk,
                    alterations.0.as_mut_ptr(),
                    alterations.0.len(),
                    opts,
                    q,
                )
            },
        )?;
        let mut failed = Vec::new();
        // SAFETY: the result and its responses live as long as `reply`.
        unsafe {
            let res = sys::rd_kafka_event_AlterUserScramCredentials_result(reply.event);
            let mut n = 0usize;
            let responses = sys::rd_kafka_AlterUserScramCredentials_result_responses(res, &mut n);
            for i in 0..n {
                let r = *responses.add(i);
                let user =
                    CStr::from_ptr(sys::rd_kafka_AlterUserScramCredentials_result_response_user(r))
                        .to_string_lossy()
                        .into_owned();
                // An error object whose code is NO_ERROR stands for success.
                let e = sys::rd_kafka_AlterUserScramCredentials_result_response_error(r);
                if !e.is_null()
                    && sys::rd_kafka_error_code(e)
                        != sys::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                {
                    failed.push(format!("{user}: {}", error_text(e).unwrap_or_default()));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(AclError::Broker {
                call: "alter SCRAM users",
                reason: failed.join("; "),
            })
        }
    }
}
