<?php
/**
 * Plugin Name: clonepool clone helpers
 * Description: Written by the clonepool agent into every clone (never exported or imported): outgoing mail is captured to a file instead of sent, and a one-time magic login link logs the administrator in.
 */

defined('ABSPATH') || exit;

// Mail is captured, never sent: one JSON line per message in wp-content/clonepool-mail/mail.jsonl.
add_filter('pre_wp_mail', function ($return, $atts) {
    $dir = WP_CONTENT_DIR . '/clonepool-mail';
    if (!is_dir($dir)) {
        @mkdir($dir, 0750, true);
        @file_put_contents($dir . '/.htaccess', "Require all denied\n");
        @file_put_contents($dir . '/index.php', "<?php\n");
    }
    $line = wp_json_encode(array(
        'at' => gmdate('c'),
        'to' => isset($atts['to']) ? $atts['to'] : null,
        'subject' => isset($atts['subject']) ? $atts['subject'] : null,
        'message' => isset($atts['message']) ? $atts['message'] : null,
        'headers' => isset($atts['headers']) ? $atts['headers'] : null,
    ));
    @file_put_contents($dir . '/mail.jsonl', $line . "\n", FILE_APPEND | LOCK_EX);
    return true;
}, 10, 2);

// One-time magic login: ?clonepool_login=TOKEN. The option holds sha256(token)|expires|host|user id;
// it is deleted by the first use (only one request can delete it), bound to the clone's host.
add_action('init', function () {
    if (!isset($_GET['clonepool_login'])) {
        return;
    }
    nocache_headers();
    $token = (string) wp_unslash($_GET['clonepool_login']);
    $stored = get_option('clonepool_magic_login');
    $parts = is_string($stored) ? explode('|', $stored) : array();
    $host = isset($_SERVER['HTTP_HOST']) ? strtolower((string) $_SERVER['HTTP_HOST']) : '';
    if (count($parts) === 4
        && $token !== ''
        && hash_equals($parts[0], hash('sha256', $token))
        && time() < (int) $parts[1]
        && hash_equals($parts[2], $host)
        && (int) $parts[3] > 0
        && delete_option('clonepool_magic_login')) {
        $user = get_user_by('id', (int) $parts[3]);
        if ($user) {
            wp_set_current_user($user->ID);
            wp_set_auth_cookie($user->ID, false, is_ssl());
            wp_safe_redirect(admin_url());
            exit;
        }
    }
    wp_die(
        esc_html__('This login link is invalid, expired or was already used.'),
        'Login link refused',
        array('response' => 403)
    );
}, 1);
