<?php
// clonepool-wp-install: installs WordPress without a browser. Reads key=value lines on stdin:
// site_url, title, admin_user, admin_password, admin_email. Sets siteurl/home to site_url and
// blog_public=0. Exit codes: 0 installed, 3 already installed, 2 bad input, 1 failure.
require __DIR__ . '/common.php';

$tool = 'clonepool-wp-install';
const EXIT_ALREADY_INSTALLED = 3;

$in = clonepool_read_kv($tool, ['site_url', 'title', 'admin_user', 'admin_password', 'admin_email']);
$site = clonepool_parse_site_url($tool, $in['site_url']);
if (preg_match('/[\x00-\x1f\x7f]/', $in['admin_password']) || trim($in['admin_password']) !== $in['admin_password']) {
    clonepool_fail($tool, 'admin_password must not hold control characters or surrounding spaces', CLONEPOOL_EXIT_BAD_INPUT);
}

clonepool_fake_request($site);
clonepool_block_http();
clonepool_guard_exit($tool);
define('WP_INSTALLING', true);

// No mail from a clone: the new-site notification is pluggable, replace it before upgrade.php.
function wp_new_blog_notification($blog_title, $blog_url, $user_id, $password)
{
}

require '/usr/share/wordpress/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';

if (is_blog_installed()) {
    clonepool_fail($tool, 'WordPress is already installed in database ' . DB_NAME, EXIT_ALREADY_INSTALLED);
}
if (!is_email($in['admin_email'])) {
    clonepool_fail($tool, 'admin_email is not an e-mail address', CLONEPOOL_EXIT_BAD_INPUT);
}
if (sanitize_user($in['admin_user'], true) !== $in['admin_user']) {
    clonepool_fail($tool, 'admin_user holds characters WordPress does not allow in user names', CLONEPOOL_EXIT_BAD_INPUT);
}

$result = wp_install($in['title'], $in['admin_user'], $in['admin_email'], 0, '', $in['admin_password']);
if (!is_array($result) || empty($result['user_id'])) {
    clonepool_fail($tool, 'wp_install did not create the admin user');
}
global $wpdb;
if ($wpdb->last_error !== '') {
    clonepool_fail($tool, 'database error during install: ' . $wpdb->last_error);
}

update_option('siteurl', $site['normalized']);
update_option('home', $site['normalized']);
update_option('blog_public', '0');

// The install could not test pretty permalinks (no outgoing HTTP); Apache's vhost has the
// rewrite rules, so turn on WordPress's default pretty structure.
global $wp_rewrite;
$wp_rewrite->set_permalink_structure('/%year%/%monthnum%/%day%/%postname%/');
flush_rewrite_rules(false);

fwrite(STDERR, "$tool: installed '" . get_option('blogname') . "' at " . get_option('siteurl') . "\n");
clonepool_done();
