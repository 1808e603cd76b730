/* node_enroll.h - "portcullis-node enroll" (docs/link.md): makes the node's key,
 * sends a certificate request with the one-time token to the controller's
 * hub (verified against the CA fingerprint the token carries), and writes
 * node.key, node.crt, ca.crt and link.json into the state directory.
 */
#ifndef PORTCULLIS_NODE_ENROLL_H
#define PORTCULLIS_NODE_ENROLL_H

/* The subcommand: argv[0] is "enroll". Returns the process exit status
 * (0 enrolled; 1 refused or failed, with the reason on stderr; 2 usage). */
int node_enroll_main(int argc, char **argv);

#endif
