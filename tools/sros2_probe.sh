#!/usr/bin/env bash
# Does this ROS 2 install support DDS-Security? Makes a throw-away keystore with openssl (one CA,
# one enclave /probe, governance + permissions signed with S/MIME as DDS-Security wants) and starts
# an rclpy node in Enforce mode. Prints the node's output and exits with its status.
#   tools/sros2_probe.sh            (source env.sh first)
set -euo pipefail
ks=$(mktemp -d)/keystore
trap 'rm -rf "$(dirname "$ks")"' EXIT
e=$ks/enclaves/probe
mkdir -p "$ks/private" "$e"
openssl ecparam -name prime256v1 -genkey -noout -out "$ks/private/ca.key.pem" 2>/dev/null
openssl req -x509 -new -key "$ks/private/ca.key.pem" -subj "/CN=sernf_probe_ca" -days 1 -out "$e/identity_ca.cert.pem" 2>/dev/null
cp "$e/identity_ca.cert.pem" "$e/permissions_ca.cert.pem"
openssl ecparam -name prime256v1 -genkey -noout -out "$e/key.pem" 2>/dev/null
openssl req -new -key "$e/key.pem" -subj "/CN=probe" -out "$e/req.csr" 2>/dev/null
openssl x509 -req -in "$e/req.csr" -CA "$e/identity_ca.cert.pem" -CAkey "$ks/private/ca.key.pem" -CAcreateserial -days 1 -out "$e/cert.pem" 2>/dev/null
cat > "$e/governance.xml" <<'X'
<dds><domain_access_rules><domain_rule><domains><id_range><min>0</min><max>232</max></id_range></domains>
<allow_unauthenticated_participants>false</allow_unauthenticated_participants><enable_join_access_control>true</enable_join_access_control>
<discovery_protection_kind>ENCRYPT</discovery_protection_kind><liveliness_protection_kind>ENCRYPT</liveliness_protection_kind>
<rtps_protection_kind>SIGN</rtps_protection_kind><topic_access_rules><topic_rule><topic_expression>*</topic_expression>
<enable_discovery_protection>true</enable_discovery_protection><enable_liveliness_protection>true</enable_liveliness_protection>
<enable_read_access_control>true</enable_read_access_control><enable_write_access_control>true</enable_write_access_control>
<metadata_protection_kind>ENCRYPT</metadata_protection_kind><data_protection_kind>ENCRYPT</data_protection_kind>
</topic_rule></topic_access_rules></domain_rule></domain_access_rules></dds>
X
cat > "$e/permissions.xml" <<'X'
<dds><permissions><grant name="/probe"><subject_name>CN=probe</subject_name><validity><not_before>2020-01-01T00:00:00</not_before>
<not_after>2040-01-01T00:00:00</not_after></validity><allow_rule><domains><id_range><min>0</min><max>232</max></id_range></domains>
<publish><topics><topic>*</topic></topics></publish><subscribe><topics><topic>*</topic></topics></subscribe></allow_rule>
<default>DENY</default></grant></permissions></dds>
X
for f in governance permissions; do
  openssl smime -sign -text -in "$e/$f.xml" -out "$e/$f.p7s" -signer "$e/identity_ca.cert.pem" -inkey "$ks/private/ca.key.pem"
done
export ROS_SECURITY_KEYSTORE=$ks ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-117} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
echo "+ ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce ROS_SECURITY_KEYSTORE=<keystore> python -c 'rclpy.init(); Node(\"probe\")' --ros-args --enclave /probe"
python - --ros-args --enclave /probe <<'PY'
import rclpy
from rclpy.node import Node
from std_msgs.msg import String
rclpy.init()
node = Node("probe")
node.create_publisher(String, "/sernf_probe", 10).publish(String(data="secured"))
print("DDS-Security: the node came up in Enforce mode")
node.destroy_node()
rclpy.shutdown()
PY
