"""The local dev stack: a real Kafka broker (KRaft, jars from Maven Central through the
``pom.xml`` beside this file) and a real Redis, run from the project's own files, no Docker.

``fraudstream devstack up|down|status|fetch`` drives it from a shell; tests and the demo
use :class:`DevStack` directly.
"""

from fraudstream.devstack.stack import DevStack, ServiceStatus, StackInfo, StackStatus

__all__ = ["DevStack", "ServiceStatus", "StackInfo", "StackStatus"]
