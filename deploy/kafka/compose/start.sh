#!/bin/bash
# One broker of docker-compose.yml (in place of the image's own start
# script): server.properties from this directory plus this node's id and
# name, and the brokers' SCRAM login as `admin` from its secret; the node is
# formatted once, with `admin` as its first SCRAM user (the brokers talk to
# each other as admin, so it must exist before they start). Files holding
# the password are created readable by this user only.
set -euo pipefail
umask 077
: "${KAFKA_NODE_ID:?KAFKA_NODE_ID names this node}" "${CLUSTER_ID:?CLUSTER_ID names the cluster}"
password=$(cat /run/secrets/admin)
login="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"${password}\";"
conf=/tmp/server.properties
{
  cat /etc/govbus/kafka/server.properties
  echo "node.id=${KAFKA_NODE_ID}"
  echo "advertised.listeners=SASL_SSL://$(hostname):9092"
  echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=${login}"
} > "$conf"
# For the healthcheck: a client of this node, as admin.
{
  echo "security.protocol=SASL_SSL"
  echo "sasl.mechanism=SCRAM-SHA-512"
  echo "sasl.jaas.config=${login}"
  echo "ssl.truststore.type=PEM"
  echo "ssl.truststore.location=/run/secrets/ca.pem"
} > /tmp/admin.properties
if [ ! -e /var/lib/kafka/data/meta.properties ]; then
  /opt/kafka/bin/kafka-storage.sh format --cluster-id "$CLUSTER_ID" -c "$conf" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=${password}]"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$conf"
