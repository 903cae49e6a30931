<?php
// clonepool-wp-admin-password USER: sets the password of WordPress user USER (argv, not secret)
// from one line on stdin and ends that user's sessions. Plugins are not loaded.
// Exit codes: 0 done, 2 bad input, 4 WordPress not installed, 5 no such user, 1 failure.
require __DIR__ . '/common.php';

$tool = 'clonepool-wp-admin-password';
if ($argc !== 2 || $argv[1] === '') {
    clonepool_fail($tool, 'usage: clonepool-wp-admin-password USER  (password on stdin)', CLONEPOOL_EXIT_BAD_INPUT);
}
$login = $argv[1];
$line = fgets(STDIN);
$password = $line === false ? '' : rtrim($line, "\r\n");
if ($password === '') {
    clonepool_fail($tool, 'expected the new password on stdin', CLONEPOOL_EXIT_BAD_INPUT);
}
if (preg_match('/[\x00-\x1f\x7f]/', $password)) {
    clonepool_fail($tool, 'the password contains control characters', CLONEPOOL_EXIT_BAD_INPUT);
}

clonepool_fake_request(['scheme' => 'http', 'host' => 'localhost', 'http_host' => 'localhost']);
clonepool_block_http();
clonepool_guard_exit($tool);
// Keeps wp-load from redirecting to the installer and from loading plugins.
define('WP_INSTALLING', true);
require '/usr/share/wordpress/wp-load.php';

if (!is_blog_installed()) {
    clonepool_fail($tool, 'WordPress is not installed', 4);
}
$user = get_user_by('login', $login);
if ($user === false) {
    clonepool_fail($tool, "no WordPress user '$login'", 5);
}
wp_set_password($password, $user->ID);
WP_Session_Tokens::get_instance($user->ID)->destroy_all();
fwrite(STDERR, "$tool: password of '$login' set\n");
clonepool_done();
